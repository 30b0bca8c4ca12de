// Plays the scenarios with real players in one headless Chromium, pages side by side, against
// the test origin (origin.mjs) and a running collector, and writes what each page observed
// (its ground truth), every CMCD and beacon body posted, and the web SDK's own counters, as
// JSON. Pages with `sdk` also run the web SDK (sdk/web) on the same <video>, under its own
// view and stream ids, so the same playback is reported both ways.
//
// Usage: node run.mjs --collector URL --content DIR --out FILE [--only name,name]
// Needs /usr/bin/chromium (Debian's package); puppeteer-core never downloads a browser.

import puppeteer from 'puppeteer-core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startOrigin } from './origin.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
for (const required of ['collector', 'content', 'out']) {
  if (!args[required]) { console.error(`missing --${required}`); process.exit(2); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const runId = Date.now().toString(36);

// What each page does, in seconds from its start. `finish` pauses (the players report the time
// played so far) and the page is then read; `leave` closes the page instead.
const STEPS_SCALE = Number(process.env.STEPS_SCALE || 1);
const SCENARIOS = [
  { name: 'hls-healthy', p: 'hls', scenario: 'none', sdk: true, steps: [[40, 'finish']] },
  { name: 'dash-healthy', p: 'dash', scenario: 'none', sdk: true, steps: [[40, 'finish']] },
  { name: 'shaka-healthy', p: 'shaka', scenario: 'none', steps: [[40, 'finish']] },
  { name: 'hls-stall', p: 'hls', scenario: 'stall', sdk: true, steps: [[45, 'finish']] },
  { name: 'hls-missing', p: 'hls', scenario: 'missing', sdk: true, steps: [[10, 'finish']] },
  { name: 'hls-pause', p: 'hls', scenario: 'none', sdk: true, steps: [[14, 'pause'], [20, 'play'], [30, 'leave']] },
  { name: 'hls-throttle', p: 'hls', scenario: 'throttle', sdk: true, steps: [[45, 'finish']] },
  // The web SDK alone, with a player that does not report CMCD.
  { name: 'hls-sdk-only', p: 'hls', scenario: 'none', sdk: true, cmcd: false, steps: [[40, 'finish']] },
  // The SDK on dash.js through the faults (a second wave: two cores play eight pages at most).
  { name: 'dash-sdk-stall', p: 'dash', scenario: 'stall', sdk: true, cmcd: false, wave: 2, steps: [[45, 'finish']] },
  { name: 'dash-sdk-missing', p: 'dash', scenario: 'missing', sdk: true, cmcd: false, wave: 2, steps: [[10, 'finish']] },
  { name: 'dash-sdk-pause', p: 'dash', scenario: 'none', sdk: true, cmcd: false, wave: 2,
    steps: [[14, 'pause'], [20, 'play'], [30, 'leave']] },
  // Shaka's failed load() (a missing manifest) through the SDK's Shaka adapter: Shaka reports
  // it only through its promise.
  { name: 'shaka-sdk-missing', p: 'shaka', scenario: 'missing', sdk: true, cmcd: false, wave: 2, steps: [[10, 'finish']] },
  // Failures after the start (every media segment 404 from 12 s on, retries off), through the
  // SDK: the players' own CMCD cannot say it. hls.js 1.7.4 sends no `e` report and no `sta=f`
  // for a fatal fragLoadError; dash.js 5.2.1 sends `e=e,ec=27` for every failed request and
  // never `sta=f`; Shaka 5.2.12 sends `sta=f` and `e=e` without `ec`, twice.
  { name: 'hls-gone', p: 'hls', scenario: 'gone', sdk: true, cmcd: false, wave: 2, steps: [[30, 'finish']] },
  { name: 'dash-gone', p: 'dash', scenario: 'gone', sdk: true, cmcd: false, wave: 2, steps: [[30, 'finish']] },
  { name: 'shaka-gone', p: 'shaka', scenario: 'gone', sdk: true, cmcd: false, wave: 2, steps: [[30, 'finish']] },
];
// Not part of the test: the demo's one real viewer (scripts/demo.sh).
const EXTRA = [{ name: 'demo', p: 'hls', scenario: 'none', steps: [[Number(process.env.DEMO_SECONDS || 40), 'finish']] }];
const only = args.only ? new Set(args.only.split(',')) : null;

const origin = await startOrigin({
  contentDir: path.resolve(args.content),
  pageDir: here,
  modulesDir: path.join(here, 'node_modules'),
  sdkFile: path.resolve(here, '../../sdk/web/dist/qoe.min.js'),
});
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required', '--mute-audio', '--disable-gpu',
    '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
    '--no-first-run', '--disable-sync', '--disable-quic', '--disable-background-timer-throttling',
    '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
    '--disable-background-media-suspend'],
});

async function run(s) {
  const cmcd = s.cmcd !== false;
  const sid = cmcd ? `${s.name}-${runId}` : '';
  const cid = sid;
  const sdkView = s.sdk ? `${s.name}-sdk-${runId}` : null;
  // Its own context (a window of its own): a background tab's media would not start.
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const posted = [];
  const beacons = [];
  const console_ = [];
  page.on('request', (r) => {
    if (r.url().includes('/v1/cmcd') && r.method() === 'POST') posted.push({ at: Date.now(), body: r.postData() ?? null });
    if (r.url().includes('/v1/beacons') && r.method() === 'POST') beacons.push({ at: Date.now(), body: r.postData() ?? null });
  });
  page.on('console', (m) => { if (console_.length < 200) console_.push(`${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) console_.push(`http ${r.status()} ${r.request().method()} ${r.url()}`); });
  page.on('requestfailed', (r) => {
    // CML drops its report fetch once it has the status: not a failure.
    if (!r.url().includes('/v1/')) console_.push(`failed ${r.url()} ${r.failure()?.errorText}`);
  });
  const url = `${origin.base}/player.html?p=${s.p}&scenario=${s.scenario}-${runId}-${s.name}&sid=${sid}&cid=${cid}` +
    `&collector=${encodeURIComponent(args.collector)}&cmcd=${cmcd ? 1 : 0}` +
    (sdkView ? `&sdk=1&sdkview=${sdkView}&sdkstream=${sdkView}` : '');
  const started = Date.now();
  await page.goto(url);
  let truth = null;
  let sdk = null;
  let closed = false;
  const readSdk = () => page.evaluate(() => window.qoe.sdk());
  for (const [at, action] of s.steps) {
    await sleep(Math.max(0, started + at * 1000 * STEPS_SCALE - Date.now()));
    if (action === 'pause') await page.evaluate(() => window.qoe.pause());
    else if (action === 'play') await page.evaluate(() => window.qoe.play());
    else if (action === 'finish') {
      truth = await page.evaluate(() => window.qoe.finish());
      await sleep(2500); // the pause report reaches the collector
      truth = await page.evaluate(() => window.qoe.truth);
      sdk = await readSdk();
    } else if (action === 'leave') {
      // The viewer stops watching and closes the page (players report nothing on close).
      await page.evaluate(() => window.qoe.finish());
      await sleep(300);
      truth = await page.evaluate(() => window.qoe.truth);
      sdk = await readSdk();
      // With runBeforeUnload, close() returns before the page has closed; wait for it (its
      // pagehide handlers have then run and queued their beacons) before the context goes,
      // which a loaded machine can otherwise reach first.
      const gone = new Promise((resolve) => page.once('close', resolve));
      await page.close({ runBeforeUnload: true });
      await Promise.race([gone, sleep(10000)]);
      closed = true;
      await sleep(1500);
    }
  }
  if (!closed) await page.close();
  await context.close();
  return { name: s.name, player: s.p, scenario: s.scenario, sid, cid, sdk_view: sdkView, sdk_stream: sdkView,
    sdk, truth, posted, beacons, console: console_ };
}

let results;
try {
  const chosen = only ? [...SCENARIOS, ...EXTRA].filter((s) => only.has(s.name)) : SCENARIOS;
  results = [];
  for (const wave of [...new Set(chosen.map((s) => s.wave || 1))].sort()) {
    results.push(...await Promise.all(chosen.filter((s) => (s.wave || 1) === wave).map(run)));
  }
} finally {
  await browser.close();
  origin.server.close();
}
fs.writeFileSync(args.out, JSON.stringify({ run: runId, pages: results, origin_requests: origin.log.slice(0, 5000) }, null, 1));
console.log(`wrote ${args.out}: ${results.length} pages`);
process.exit(0);
