// Drives the dashboard viewer (dashboards/viewer) in headless Chromium and writes what the
// pages showed as JSON, for tests/dashboards/test_viewer.py to check against ClickHouse:
//
// - every dashboard over the given range: each panel's state (done, nodata, error,
//   unsupported), rows, the interval it asked for; every console error and page error;
// - the numbers of panels as drawn: a table (region x CDN rebuffering matrix), the stats of
//   the view drill-down, a time series legend (overview rebuffering ratio);
// - the one-view dashboard, opened by clicking a view id in the worst-views table;
// - a variable change (region) and a time range change: the queries they sent and what the
//   matrix then shows;
// - the alerts page at --alerts-at: each rule's state and instances;
// - screenshots (overview, region x CDN, alerts) into --screenshots.
//
// Usage: node viewer.mjs --viewer URL --from S --to S --alerts-at S --out FILE --screenshots DIR
// Needs /usr/bin/chromium (Debian's package); puppeteer-core never downloads a browser.

import puppeteer from 'puppeteer-core';
import fs from 'node:fs';
import path from 'node:path';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
for (const required of ['viewer', 'from', 'to', 'alerts-at', 'out', 'screenshots']) {
  if (!args[required]) { console.error(`missing --${required}`); process.exit(2); }
}
const base = args.viewer.replace(/\/$/, '');
fs.mkdirSync(args.screenshots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync', '--hide-scrollbars',
    // The dashboards are open side by side: none may be throttled as a background tab.
    '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
    '--disable-backgrounding-occluded-windows'],
  defaultViewport: { width: 1600, height: 1000 },
});
const t0 = Date.now();
const step = (what) => console.error(`[viewer.mjs] ${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
const out = { dashboards: {}, errors: [], numbers: {}, changes: {}, alerts: null, view: null };

async function newPage(label) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') out.errors.push(`${label}: console: ${m.text()}`); });
  page.on('pageerror', (e) => out.errors.push(`${label}: page error: ${e.message}`));
  page.on('requestfailed', (r) => out.errors.push(`${label}: request failed: ${r.url()}`));
  page.queries = [];
  page.on('request', (r) => { if (r.url().includes('/api/query')) page.queries.push(r.url()); });
  return page;
}

// Polled by timer: a page that is not in front gets no animation frames, which waitForFunction
// polls on by default.
const POLL = { timeout: 60000, polling: 100 };

// Every panel drawn (none loading) and no request in flight.
async function settled(page) {
  await page.waitForFunction(() => document.body.dataset.ready === '1'
    && document.body.dataset.pending === '0'
    && !document.querySelector('[data-state="loading"]'), { timeout: 120000, polling: 100 });
}

async function panels(page) {
  return page.$$eval('section.panel', (els) => els.map((el) => ({
    id: Number(el.dataset.panelId), type: el.dataset.type, title: el.querySelector('h2').textContent,
    state: el.dataset.state, rows: Number(el.dataset.rows || 0), interval: Number(el.dataset.interval || 0),
    text: el.querySelector('.body').innerText.slice(0, 300),
  })));
}

// Auto-refresh off: a refresh redraws the panels while the script reads them.
const range = `from=${args.from}&to=${args.to}&refresh=off`;
const list = await (await fetch(`${base}/api/dashboards`)).json();
const pages = await Promise.all(list.filter((d) => d.uid !== 'qoe-view').map(async (d) => {
  const page = await newPage(d.uid);
  await page.goto(`${base}/d/${d.uid}?${range}`);
  await settled(page);
  step(`${d.uid} drawn`);
  out.dashboards[d.uid] = await panels(page);
  return [d.uid, page];
}));
const byUid = Object.fromEntries(pages);

step('every dashboard drawn');
// The numbers as drawn, with the interval each panel asked for.
const overview = byUid['qoe-overview'];
out.numbers.timeseries = await overview.$$eval('section[data-panel-id="5"] .legend tr[data-series]', (trs) => trs.map((tr) => ({
  series: tr.dataset.series,
  cells: [...tr.querySelectorAll('td[data-calc]')].map((td) => ({ calc: td.dataset.calc, value: td.dataset.value, text: td.textContent })),
})));
out.numbers.timeseries_interval = await overview.$eval('section[data-panel-id="5"]', (el) => Number(el.dataset.interval));
const matrixCells = (page) => page.$$eval('section[data-panel-id="2"] table.data tbody tr', (trs) => trs.map((tr) =>
  [...tr.querySelectorAll('td')].map((td) => ({ value: td.dataset.value, text: td.textContent, background: td.style.background }))));
const regionCdn = byUid['qoe-region-cdn'];
out.numbers.table = { header: await regionCdn.$$eval('section[data-panel-id="2"] th', (ths) => ths.map((th) => th.textContent)),
  rows: await matrixCells(regionCdn) };
out.numbers.stat = await byUid['qoe-views'].$$eval('section[data-type="stat"] .stat', (els) => els.map((el) => ({
  panel: Number(el.closest('section').dataset.panelId), field: el.dataset.field, value: el.dataset.value,
  text: el.querySelector('.value').textContent })));

// Screenshots: the overview during the incident, region x CDN. Each page in front first: a
// background page draws no frames, and its screenshot waits for one until the protocol times out.
async function screenshot(page, name) {
  await page.bringToFront();
  await page.screenshot({ path: path.join(args.screenshots, name), fullPage: true });
}
await screenshot(overview, 'viewer-overview.png');
await screenshot(regionCdn, 'viewer-region-cdn.png');

step('numbers read, screenshots taken');
// The one-view dashboard, through the worst-views table's link.
const views = byUid['qoe-views'];
// Clicks need the page in front (a background page gets no frames to click in).
await views.bringToFront();
const viewId = await views.$eval('section[data-panel-id="7"] td a', (a) => a.textContent);
await Promise.all([views.click('section[data-panel-id="7"] td a'), views.waitForFunction(() => location.pathname === '/d/qoe-view', POLL)]);
await settled(views);
out.view = { id: viewId, url: await views.evaluate(() => location.pathname + location.search), panels: await panels(views),
  summary: await views.$$eval('section[data-panel-id="2"] td', (tds) => tds.map((td) => td.dataset.value)) };
out.dashboards['qoe-view'] = out.view.panels;

step('the one-view dashboard drawn');
// A variable: pick the first region in the region x CDN dashboard.
regionCdn.queries.length = 0;
await regionCdn.bringToFront();
await regionCdn.click('button[data-var="region"]');
const region = await regionCdn.$eval('.dropdown input:not([value="$__all"])', (i) => i.value);
await Promise.all([regionCdn.click(`.dropdown input[value="${region}"]`),
  regionCdn.waitForFunction((r) => location.search.includes(`var-region=${r}`), POLL, region)]);
await settled(regionCdn);
out.changes.variable = { region, queries: regionCdn.queries.slice(), matrix: await matrixCells(regionCdn) };

step('a variable changed');
// The time range: the custom range's second half.
regionCdn.queries.length = 0;
const half = Math.floor((Number(args.from) + Number(args.to)) / 2);
await regionCdn.$eval('#from', (el, v) => { el.value = new Date(v * 1000).toISOString().slice(0, 19).replace('T', ' '); }, half);
await Promise.all([regionCdn.click('#apply'), regionCdn.waitForFunction((f) => location.search.includes(`from=${f}`), POLL, half)]);
await settled(regionCdn);
out.changes.range = { from: half, queries: regionCdn.queries.slice(), matrix: await matrixCells(regionCdn) };

step('the time range changed');
// The alerts page during the incident.
const alerts = await newPage('alerts');
await alerts.goto(`${base}/alerts?at=${args['alerts-at']}`);
await alerts.waitForSelector('#alerts', { timeout: 120000 });
await settled(alerts);
out.alerts = await alerts.$$eval('#alerts tbody tr', (trs) => trs.map((tr) => ({
  uid: tr.dataset.rule, state: tr.dataset.state,
  instances: [...tr.querySelectorAll('li')].map((li) => li.textContent) })));
await screenshot(alerts, 'viewer-alerts.png');

// A dashboard of an unknown panel type, if the viewer serves one.
if (list.some((d) => d.uid === 'test-unknown-panel')) {
  const page = await newPage('test-unknown-panel');
  await page.goto(`${base}/d/test-unknown-panel?${range}`);
  await settled(page);
  out.dashboards['test-unknown-panel'] = await panels(page);
  out.unknown = await page.$$eval('.panel-unsupported', (els) => els.map((e) => e.textContent));
}

await browser.close();
fs.writeFileSync(args.out, JSON.stringify(out, null, 1));
