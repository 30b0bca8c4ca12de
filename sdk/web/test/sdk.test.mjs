// The SDK's state machine and delivery against a fake media element and a fake clock (node's
// built-in test runner: `node --test test/`). What the page sees is driven event by event, and
// what the collector would receive is read back from the bodies the SDK sent.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { monitor } from '../src/qoe.js';

class FakeVideo extends EventTarget {
  constructor() {
    super();
    Object.assign(this, { paused: true, seeking: false, ended: false, autoplay: false, currentSrc: '', error: null, dropped: 0 });
  }
  getVideoPlaybackQuality() { return { droppedVideoFrames: this.dropped }; }
  fire(type) { this.dispatchEvent(new Event(type)); }
}

/** A manual clock with timers, a transport that records bodies, and page stand-ins. */
function fakeEnv({ status = () => 204 } = {}) {
  const env = {
    t: 1_000_000, timers: [], nextId: 1, bodies: [], beacons: [], pending: [],
    window: new EventTarget(), document: Object.assign(new EventTarget(), { visibilityState: 'visible' }),
  };
  Object.assign(env, {
    now: () => env.t,
    monotonic: () => env.t,
    random: () => 0.5,
    uuid: () => `view-${env.nextId++}`,
    setInterval: (f, ms) => { const id = env.nextId++; env.timers.push({ id, at: env.t + ms, every: ms, f }); return id; },
    clearInterval: (id) => { env.timers = env.timers.filter((x) => x.id !== id); },
    setTimeout: (f, ms) => { const id = env.nextId++; env.timers.push({ id, at: env.t + ms, f }); return id; },
    clearTimeout: (id) => { env.timers = env.timers.filter((x) => x.id !== id); },
    send: (url, body) => {
      const parsed = JSON.parse(body);
      const s = status(parsed);
      if (s === 'hang') return new Promise(() => {});
      if (s === 'throw') throw new Error('network down');
      env.bodies.push({ url, body: parsed, status: typeof s === 'object' ? s.status : s });
      return Promise.resolve(typeof s === 'object' ? s : { status: s, retryAfter: 0 });
    },
    beacon: (url, body) => { env.beacons.push(JSON.parse(body)); return true; },
  });
  /** Advances the clock, running due timers in order, and lets promises settle. */
  env.advance = async (ms) => {
    const end = env.t + ms;
    for (;;) {
      const due = env.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      env.t = due.at;
      if (due.every) due.at += due.every; else env.timers = env.timers.filter((x) => x !== due);
      due.f();
      await settle();
    }
    env.t = end;
    await settle();
  };
  return env;
}

const settle = () => new Promise((r) => setImmediate(r));

function setup(opts = {}) {
  const env = fakeEnv(opts);
  const video = new FakeVideo();
  const view = monitor(video, { endpoint: 'http://collector:8080/', streamId: 'ch-1', cdn: 'cdn-a', player: 'p', protocol: 'hls', env, ...(opts.options || {}) });
  /** Every event delivered (fetch or beacon), in order. */
  const events = () => [...env.bodies.filter((b) => b.status < 300).map((b) => b.body), ...env.beacons].flatMap((b) => b.events);
  const of = (type) => events().filter((e) => e.type === type);
  return { env, video, view, events, of };
}

async function startPlaying(s, startupMs = 1200) {
  s.video.paused = false;
  s.video.fire('play');
  await s.env.advance(startupMs);
  s.video.fire('playing');
  await settle();
}

test('startup, first frame and heartbeats carry the time since the previous event', async () => {
  const s = setup();
  await startPlaying(s, 1200);
  assert.deepEqual(s.of('view_start').map((e) => e.seq), [0], 'view_start sent at once');
  const [ff] = s.of('first_frame');
  assert.equal(ff.startup_ms, 1200);
  assert.equal(ff.started, true);
  await s.env.advance(30_000);
  const hbs = s.of('heartbeat');
  assert.equal(hbs.length, 3, 'a heartbeat every 10 s, delivered within 15 s');
  assert.deepEqual(hbs.map((e) => e.playing_ms), [8800, 10000, 10000]);
  assert.ok(hbs.every((e) => e.stall_ms === 0 && e.started === true));
  assert.deepEqual(s.events().map((e) => e.seq), [0, 1, 2, 3, 4]);
  const body = s.env.bodies[0];
  assert.equal(body.url, 'http://collector:8080/v1/beacons');
  assert.deepEqual(body.body.view, { view_id: 'view-3', stream_id: 'ch-1', stream_type: 'live', cdn: 'cdn-a', platform: 'web', player: 'p', protocol: 'hls' });
  assert.equal(body.body.sent_at, 1_000_000, 'sent_at is the send time');
});

test('a waiting after the first frame is a stall; startup and seeking are not', async () => {
  const s = setup();
  s.video.paused = false;
  s.video.fire('play');
  s.video.fire('waiting'); // during startup
  await s.env.advance(500);
  s.video.fire('playing');
  await s.env.advance(2000);
  s.video.fire('waiting');
  await s.env.advance(1500);
  s.video.fire('playing');
  await s.env.advance(1000);
  s.video.seeking = true;
  s.video.fire('seeking');
  s.video.fire('waiting');
  await s.env.advance(700);
  s.video.seeking = false;
  s.video.fire('playing');
  await s.env.advance(1000);
  s.view.end('exit');
  await settle();
  assert.equal(s.of('stall_start').length, 1);
  assert.equal(s.of('stall_start')[0].playing_ms, 2000);
  assert.equal(s.of('stall_end')[0].stall_ms, 1500);
  assert.equal(s.of('seek').length, 1);
  const total = (f) => s.events().reduce((a, e) => a + (e[f] || 0), 0);
  assert.equal(total('playing_ms'), 4000, 'seeking time is not playing time');
  assert.equal(total('stall_ms'), 1500);
  assert.equal(s.of('view_end')[0].reason, 'exit');
});

test('pause and resume: paused time counts as neither', async () => {
  const s = setup();
  await startPlaying(s, 300);
  await s.env.advance(4000);
  s.video.paused = true;
  s.video.fire('pause');
  await s.env.advance(20_000);
  s.video.paused = false;
  s.video.fire('play');
  s.video.fire('playing');
  await s.env.advance(3000);
  s.view.end('completed');
  await settle();
  assert.equal(s.of('pause').length, 1);
  assert.equal(s.of('resume').length, 1);
  assert.equal(s.of('view_start').length, 1, 'a resume is not a new view');
  const total = s.events().reduce((a, e) => a + (e.playing_ms || 0), 0);
  assert.equal(total, 7000);
  assert.equal(s.of('heartbeat').every((e) => e.playing_ms === 0), true, 'heartbeats while paused add nothing');
});

test('a hidden page sends what is queued by sendBeacon, and leaving ends the view as exit', async () => {
  const s = setup();
  await startPlaying(s, 300);
  await s.env.advance(10_000); // one heartbeat, queued (the flush timer has not fired yet)
  s.env.document.visibilityState = 'hidden';
  s.env.document.dispatchEvent(new Event('visibilitychange'));
  assert.deepEqual(s.env.beacons.flatMap((b) => b.events).map((e) => e.type), ['heartbeat']);
  s.env.window.dispatchEvent(new Event('pagehide'));
  const last = s.env.beacons.at(-1).events.at(-1);
  assert.equal(last.type, 'view_end');
  assert.equal(last.reason, 'exit');
  assert.equal(last.started, true);
});

test('a fatal error before the first frame is a start failure that ends the view', async () => {
  const s = setup();
  s.video.fire('play');
  await s.env.advance(800);
  s.view.fail('manifestLoadError', true);
  await settle();
  const [err] = s.of('error');
  assert.deepEqual([err.code, err.fatal, err.started], ['manifestLoadError', true, false]);
  const [end] = s.of('view_end');
  assert.deepEqual([end.reason, end.started], ['error', false]);
  // A media element error after the end adds nothing to the ended view.
  s.video.error = { code: 4 };
  s.video.fire('error');
  await settle();
  assert.equal(s.of('error').length, 2, 'a new attempt reports its own failure');
  assert.equal(new Set(s.events().filter((e) => e.type === 'view_start').map((e) => e.seq)).size, 1);
});

test('a non-fatal error before any play request is not a view', async () => {
  const s = setup();
  s.view.fail('fragLoadTimeOut', false);
  await s.env.advance(20_000);
  assert.equal(s.events().length, 0);
});

test('429 and 503 are retried after Retry-After with a fresh sent_at; a refused body is dropped', async () => {
  let answers = [{ status: 503, retryAfter: 2 }, { status: 429, retryAfter: 1 }];
  const s = setup({ status: () => answers.shift() || 204 });
  s.video.fire('play');
  await settle();
  assert.equal(s.events().length, 0, 'not delivered yet');
  await s.env.advance(3000);
  assert.deepEqual(s.env.bodies.map((b) => b.status), [503, 429, 204]);
  assert.deepEqual(s.env.bodies.map((b) => b.body.sent_at), [1_000_000, 1_002_000, 1_003_000]);
  assert.equal(s.of('view_start').length, 1);
  assert.equal(s.view.stats.retries, 2);
  answers = [400];
  s.video.fire('playing');
  await s.env.advance(1);
  assert.equal(s.view.stats.refused, 1);
  assert.equal(s.view.queue.length, 0, 'a refused body is not retried forever');
});

test('network errors back off with jitter', async () => {
  let down = true;
  const s = setup({ status: () => (down ? 'throw' : 204) });
  s.video.fire('play');
  await settle();
  await s.env.advance(500);
  assert.equal(s.view.stats.retries, 1);
  assert.ok(s.view.retryAt - s.env.t <= 1000);
  await s.env.advance(700);
  assert.equal(s.view.stats.retries, 2, 'retried after about a second');
  down = false;
  await s.env.advance(5000);
  assert.equal(s.of('view_start').length, 1);
});

test('the queue is bounded: the oldest heartbeats go first, and drops are counted', async () => {
  const s = setup({ status: () => 'hang', options: { maxQueue: 10 } });
  await startPlaying(s, 100);
  await s.env.advance(200_000); // 20 heartbeats, nothing delivered
  assert.equal(s.view.queue.length, 10);
  assert.ok(s.view.stats.dropped >= 12);
  const kept = s.view.queue.map((q) => q.event.type);
  assert.deepEqual(kept.slice(0, 2), ['view_start', 'first_frame'], 'start and first frame are kept');
});

test('a reset of a started element ends the view; the next play request starts a new one', async () => {
  const s = setup();
  await startPlaying(s, 100);
  s.video.fire('emptied');
  s.video.fire('play');
  s.video.fire('playing');
  await s.env.advance(15_000);
  const ids = [...new Set(s.env.bodies.map((b) => b.body.view.view_id))];
  assert.equal(ids.length, 2);
  const second = s.env.bodies.filter((b) => b.body.view.view_id === ids[1]).flatMap((b) => b.body.events);
  assert.deepEqual(second.slice(0, 2).map((e) => [e.seq, e.type]), [[0, 'view_start'], [1, 'first_frame']]);
  assert.equal(s.of('view_end')[0].reason, 'exit');
});

test('autoplay: the view starts at loadstart, so startup includes loading', async () => {
  const s = setup();
  s.video.autoplay = true;
  s.video.fire('loadstart');
  await s.env.advance(900);
  s.video.fire('play');
  await s.env.advance(300);
  s.video.fire('playing');
  await settle();
  assert.equal(s.of('first_frame')[0].startup_ms, 1200);
  assert.equal(s.of('view_start').length, 1);
});

test('an adapter marks the play request when the player starts loading an autoplaying source', async () => {
  const s = setup();
  s.video.autoplay = true;
  const handlers = {};
  function FakeHls() {}
  FakeHls.Events = { MANIFEST_LOADING: 'ml', LEVEL_SWITCHING: 'ls', FRAG_LOADED: 'fl', ERROR: 'err' };
  FakeHls.version = '1.7.4';
  const hls = Object.assign(new FakeHls(), { levels: [{ bitrate: 800000 }, { bitrate: 2500000 }], on: (e, f) => { handlers[e] = f; } });
  s.view.hls(hls);
  handlers.ml('ml', {});
  await s.env.advance(400);
  s.video.fire('loadstart');
  handlers.ls('ls', { level: 1 });
  await s.env.advance(600);
  s.video.fire('playing');
  handlers.ls('ls', { level: 0 });
  handlers.fl('fl', { frag: { url: 'https://edge-7.cdn-b.example/seg1.ts' } });
  handlers.err('err', { fatal: true, details: 'bufferAppendError' });
  await settle();
  assert.equal(s.of('first_frame')[0].startup_ms, 1000, 'from the manifest request');
  assert.deepEqual(s.of('bitrate_change').map((e) => [e.prev_bitrate_kbps, e.bitrate_kbps]), [[2500, 800]]);
  assert.deepEqual(s.of('error').map((e) => [e.code, e.fatal, e.started]), [['bufferAppendError', true, true]]);
  assert.equal(s.env.bodies[0].body.view.player, 'p', 'an explicit player name wins');
});

test('hls.js loading another source on the same element starts a new view', async () => {
  const s = setup();
  s.video.autoplay = true;
  const handlers = {};
  const hls = { levels: [], on: (e, f) => { handlers[e] = f; } };
  s.view.hls(hls);
  handlers.hlsManifestLoading('m', { url: 'https://o/a.m3u8' });
  s.video.fire('playing');
  await s.env.advance(5000);
  handlers.hlsManifestLoading('m', { url: 'https://o/b.m3u8' });
  await s.env.advance(300);
  s.video.fire('playing');
  await s.env.advance(15_000);
  const views = [...new Set(s.env.bodies.map((b) => b.body.view.view_id))];
  assert.equal(views.length, 2);
  assert.equal(s.of('view_end')[0].reason, 'exit');
  assert.deepEqual(s.of('first_frame').map((e) => e.startup_ms), [0, 300]);
});

/** A Shaka Player as the adapter sees it: events, variant tracks, a load that can fail. */
function fakeShaka({ loadFails = null } = {}) {
  const handlers = {};
  let filter = null;
  const player = {
    tracks: [{ bandwidth: 800000, active: false }, { bandwidth: 2500000, active: true }],
    addEventListener: (type, f) => { (handlers[type] ||= []).push(f); },
    fire: (type, detail) => (handlers[type] || []).forEach((f) => f({ type, detail })),
    getVariantTracks() { return this.tracks; },
    getManifestType: () => 'DASH',
    getStats: () => ({ liveLatency: 4.2 }),
    getNetworkingEngine: () => ({ registerResponseFilter: (f) => { filter = f; } }),
    segment: (uri) => filter(1, { uri }),
    load() {
      this.fire('loading');
      if (loadFails) return Promise.reject(loadFails);
      this.fire('loaded');
      return Promise.resolve();
    },
  };
  return player;
}

test('Shaka: player, protocol, bitrate, CDN host and a CRITICAL error with its numeric code', async () => {
  globalThis.shaka = { Player: { version: 'v5.2.12' } };
  try {
    const s = setup({ options: { player: undefined, protocol: undefined, cdn: undefined } });
    s.video.autoplay = true;
    const player = fakeShaka();
    s.view.shaka(player);
    await player.load('https://o/manifest.mpd');
    await s.env.advance(700);
    s.video.fire('playing');
    player.segment('https://edge-3.cdn-c.example/v/seg1.m4s');
    player.tracks = [{ bandwidth: 800000, active: true }, { bandwidth: 2500000, active: false }];
    player.fire('adaptation');
    // Recoverable errors are not failures; a CRITICAL one ends the view.
    player.fire('error', { code: 1003, severity: 1 });
    player.fire('error', { code: 3016, severity: 2 });
    await settle();
    assert.equal(s.of('first_frame')[0].startup_ms, 700, 'from the load call');
    assert.deepEqual(s.of('bitrate_change').map((e) => [e.prev_bitrate_kbps, e.bitrate_kbps]), [[2500, 800]]);
    assert.deepEqual(s.of('error').map((e) => [e.code, e.fatal, e.started]), [['1003', false, true], ['3016', true, true]]);
    assert.equal(s.of('view_end')[0].reason, 'error');
    const view = s.env.bodies[s.env.bodies.length - 1].body.view;
    assert.deepEqual([view.player, view.protocol, view.cdn], ['shaka/5.2.12', 'dash', 'edge-3.cdn-c.example']);
  } finally {
    delete globalThis.shaka;
  }
});

test('Shaka: a failed load() is a start failure with its code, once, and the promise still rejects', async () => {
  const s = setup();
  s.video.autoplay = true;
  const error = { code: 1001, severity: 2, category: 1 };
  const player = fakeShaka({ loadFails: error });
  s.view.shaka(player);
  const loading = player.load('https://o/missing.m3u8');
  // Some builds also dispatch the same error as an event.
  player.fire('error', error);
  await assert.rejects(loading, (e) => e === error);
  // Shaka retrying the failed stream fails again: still one failure.
  player.fire('error', { code: 1001, severity: 2 });
  await settle();
  assert.deepEqual(s.of('error').map((e) => [e.code, e.fatal, e.started]), [['1001', true, false]]);
  assert.deepEqual(s.of('view_end').map((e) => [e.reason, e.started]), [['error', false]]);
});

test('dash.js: a refreshed dynamic MPD after a failure starts no new view; one failure, one error', async () => {
  const s = setup();
  s.video.autoplay = true;
  const handlers = {};
  const player = { on: (e, f) => { handlers[e] = f; }, getSource: () => 'https://o/live.mpd', getVersion: () => '5.2.1' };
  s.view.dash(player);
  handlers.manifestLoadingStarted({});
  await s.env.advance(500);
  s.video.fire('playing');
  await s.env.advance(12_000);
  handlers.error({ error: { code: 27, message: 'segment not available' } });
  handlers.error({ error: { code: 27, message: 'segment not available' } });
  handlers.manifestLoadingStarted({});
  await s.env.advance(12_000);
  handlers.error({ error: { code: 27, message: 'segment not available' } });
  await settle();
  assert.equal(s.of('view_start').length, 1);
  assert.deepEqual(s.of('error').map((e) => [e.code, e.fatal, e.started]), [['27', true, true]]);
});

test('never throws into the page, and its own time is counted', async () => {
  const s = setup({ status: () => 'throw' });
  s.video.getVideoPlaybackQuality = () => { throw new Error('broken'); };
  await startPlaying(s, 100);
  assert.doesNotThrow(() => s.video.fire('waiting'));
  await s.env.advance(30_000);
  assert.ok(s.view.stats.errors >= 1, 'the failure is counted');
  assert.ok(s.view.stats.handlerCalls > 5);
  assert.doesNotThrow(() => s.view.setBitrate('not a number'));
  assert.doesNotThrow(() => s.view.destroy());
});

test('bitrate changes carry both bitrates; dropped frames and live latency ride on heartbeats', async () => {
  const s = setup();
  s.view.setLatencySource(() => 4321.4);
  s.view.setBitrate(2500);
  await startPlaying(s, 100);
  await s.env.advance(2000);
  s.view.setBitrate(800);
  s.video.dropped = 7;
  await s.env.advance(20_000);
  assert.equal(s.of('first_frame')[0].bitrate_kbps, 2500);
  const [bc] = s.of('bitrate_change');
  assert.deepEqual([bc.bitrate_kbps, bc.prev_bitrate_kbps, bc.playing_ms], [800, 2500, 2000]);
  const [hb] = s.of('heartbeat');
  assert.deepEqual([hb.dropped_frames, hb.latency_ms, hb.bitrate_kbps], [7, 4321, 800]);
});

test('an ingest key travels in the query string (sendBeacon cannot set headers)', async () => {
  const s = setup({ options: { ingestKey: 'k 1', endpoint: 'https://c.example/v1/beacons' } });
  s.video.fire('play');
  await settle();
  assert.equal(s.env.bodies[0].url, 'https://c.example/v1/beacons?key=k%201');
});
