/**
 * QoE web SDK: reports beacon protocol v1 (SPEC §3) for an HTML5 `<video>` element, with
 * optional adapters that add what only the player knows (rendition bitrate, errors, live
 * latency, CDN host) for hls.js, dash.js and Shaka Player. No dependencies; never throws into
 * the page.
 *
 *   import * as qoe from './qoe.js';
 *   const view = qoe.monitor(video, { endpoint: 'https://qoe.example.com', streamId: 'ch-42',
 *     streamType: 'live', cdn: 'cdn-a', player: 'my-player', protocol: 'hls' });
 *   view.hls(hlsInstance);          // or view.dash(dashPlayer), view.shaka(shakaPlayer)
 *   view.end('completed');          // when the app knows better than the element
 *
 * What it measures, from the element's own events:
 * - a view starts at the play request (`play`; for an autoplaying element the player's manifest
 *   request when an adapter is attached, else `loadstart`; or `playRequested()`);
 *   `first_frame` at the first `playing`, with `startup_ms` since the request;
 * - playing time while playing; a stall is `waiting` after the first frame that is not a seek
 *   (startup and seeking are not stalls); every event after the first frame carries the playing
 *   and stall time since the view's previous event; heartbeats every 10 s;
 * - `pause` / `resume` / `seek`, `bitrate_change` with both bitrates, `error` with `fatal` and
 *   `started`, `view_end` (`completed` at `ended`, `error` after a fatal error, `exit` on
 *   `pagehide` or `end()`); a reset of a started element (`emptied`, a new source) ends the view
 *   and the next play request starts a new one.
 *
 * Delivery: events are queued and posted as `text/plain` (no CORS preflight) at once on start,
 * first frame, error and end, otherwise every 15 s, each body with a fresh `sent_at` (the
 * collector corrects the client clock with it). 429 and 503 are retried after `Retry-After`,
 * network errors with exponential backoff and jitter; a refused body (4xx) is dropped. The
 * queue is bounded: beyond `maxQueue` events the oldest heartbeat goes first (counted in
 * `stats.dropped`). On `pagehide` and when the page is hidden, what is queued leaves through
 * `navigator.sendBeacon`.
 */

const SDK_VERSION = '1.1.0';
const HEARTBEAT_MS = 10000;
const FLUSH_MS = 15000;
const MAX_QUEUE = 500;
const MAX_EVENTS_PER_BODY = 100;
const MAX_BACKOFF_MS = 60000;

/**
 * @typedef {object} Options
 * @property {string} endpoint collector base URL (`https://host`) or the full `/v1/beacons` URL
 * @property {string} streamId
 * @property {'live'|'vod'} [streamType] default `live`
 * @property {string} [cdn] default: the host of the first segment the adapter sees, else `unknown`
 * @property {string} [player] default: the adapter's player and version, else `html5`
 * @property {string} [protocol] `hls`, `dash`, ... (default `unknown`)
 * @property {string} [region] normally left to the collector (edge header or GeoIP)
 * @property {Object<string,string>} [custom] custom dimensions
 * @property {string} [ingestKey] sent as `?key=` (sendBeacon cannot set headers)
 * @property {string} [viewId] id of the first view (default: a random UUID)
 * @property {number} [maxQueue] most events held while the collector is unreachable
 * @property {object} [env] test seams: now, monotonic, setInterval, clearInterval, setTimeout,
 *   clearTimeout, send(url, body) => Promise<{status, retryAfter}>, beacon(url, body) => bool,
 *   random, window, document, uuid
 */

function defaultEnv() {
  const g = globalThis;
  return {
    now: () => Date.now(),
    monotonic: () => (g.performance ? g.performance.now() : Date.now()),
    setInterval: (f, ms) => g.setInterval(f, ms),
    clearInterval: (h) => g.clearInterval(h),
    setTimeout: (f, ms) => g.setTimeout(f, ms),
    clearTimeout: (h) => g.clearTimeout(h),
    random: Math.random,
    window: typeof window === 'undefined' ? null : window,
    document: typeof document === 'undefined' ? null : document,
    uuid: () => (g.crypto && g.crypto.randomUUID ? g.crypto.randomUUID()
      : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`),
    send: async (url, body) => {
      const r = await g.fetch(url, {
        method: 'POST', body, credentials: 'omit', keepalive: body.length < 60000,
        headers: { 'content-type': 'text/plain;charset=UTF-8' },
      });
      return { status: r.status, retryAfter: Number(r.headers.get('retry-after')) || 0 };
    },
    beacon: (url, body) => !!(g.navigator && g.navigator.sendBeacon
      && g.navigator.sendBeacon(url, new Blob([body], { type: 'text/plain;charset=UTF-8' }))),
  };
}

function beaconUrl(endpoint, key) {
  let url = String(endpoint || '').replace(/\/+$/, '');
  if (!/\/v1\/beacons$/.test(url)) url += '/v1/beacons';
  return key ? `${url}${url.includes('?') ? '&' : '?'}key=${encodeURIComponent(key)}` : url;
}

/** Monitors one media element; see the module comment. */
export class Monitor {
  /** @param {HTMLMediaElement} video @param {Options} options */
  constructor(video, options) {
    const o = options || {};
    this.video = video;
    this.env = { ...defaultEnv(), ...(o.env || {}) };
    this.url = beaconUrl(o.endpoint, o.ingestKey);
    this.context = {
      stream_id: String(o.streamId || 'unknown'), stream_type: o.streamType === 'vod' ? 'vod' : 'live',
      cdn: o.cdn || '', platform: 'web', player: o.player || '', protocol: o.protocol || '',
    };
    if (o.region) this.context.region = o.region;
    if (o.custom) this.context.custom = o.custom;
    this.maxQueue = o.maxQueue || MAX_QUEUE;
    this.nextViewId = o.viewId || null;
    /** Counters for the application and the tests; `handlerMs` is main-thread time spent here. */
    this.stats = { events: 0, bodies: 0, dropped: 0, refused: 0, retries: 0, errors: 0,
      handlerMs: 0, handlerCalls: 0, maxHandlerMs: 0, slowest: '', byHandler: {}, heartbeats: 0, heartbeatMs: 0, startupMs: null };
    this.depth = 0;
    this.queue = [];
    this.view = null;
    this.bitrate = null;
    this.latency = null;
    this.sending = false;
    this.retryAt = 0;
    this.backoffMs = 0;
    this.listeners = [];
    const on = (target, type, fn) => {
      if (!target) return;
      const handler = this.guard(fn, type);
      target.addEventListener(type, handler);
      this.listeners.push([target, type, handler]);
    };
    for (const type of ['loadstart', 'play', 'playing', 'waiting', 'seeking', 'pause', 'ended', 'error', 'emptied']) {
      on(video, type, () => this[`on_${type}`]());
    }
    on(this.env.window, 'pagehide', () => this.leave());
    on(this.env.document, 'visibilitychange', () => {
      if (this.env.document.visibilityState === 'hidden') this.flush(true);
    });
    this.heartbeatTimer = this.env.setInterval(this.guard(() => this.heartbeat(), 'heartbeat'), HEARTBEAT_MS);
    this.flushTimer = this.env.setInterval(this.guard(() => this.flush(false), 'flush'), FLUSH_MS);
    if (!video.paused || (video.autoplay && video.currentSrc)) this.guard(() => this.startView())();
  }

  /** The current view's id (null before the first play request). */
  get viewId() { return this.view ? this.view.id : null; }

  /** Wraps a handler: never throws, and its main-thread time is counted (once, by the
   * outermost handler; `name` says which was the slowest). */
  guard(fn, name = 'api') {
    return (...args) => {
      if (this.depth) {
        try { fn(...args); } catch (e) { this.stats.errors += 1; }
        return;
      }
      this.depth = 1;
      const t0 = this.env.monotonic();
      try { fn(...args); } catch (e) { this.stats.errors += 1; }
      const spent = this.env.monotonic() - t0;
      this.depth = 0;
      const st = this.stats;
      st.handlerMs += spent;
      st.handlerCalls += 1;
      if (spent > st.maxHandlerMs) { st.maxHandlerMs = spent; st.slowest = name; }
      if (name === 'heartbeat') st.heartbeatMs += spent;
      st.byHandler[name] = (st.byHandler[name] || 0) + spent;
      // The handler that saw the first frame closes the start-up part.
      if (st.startupMs === null && this.view && this.view.started) st.startupMs = st.handlerMs;
    };
  }

  // --- the view's state machine -------------------------------------------------------

  startView() {
    const now = this.env.now();
    const id = this.nextViewId || this.env.uuid();
    this.nextViewId = null;
    this.view = { id, seq: 0, start: now, started: false, state: 'starting', since: now,
      playing: 0, stall: 0, ended: false, dropped: this.droppedFrames() };
    this.emit('view_start', {});
    this.flush(false);
  }

  /** Adds the time since the last change to playing or stalled, whichever was accruing. */
  accrue(now) {
    const v = this.view;
    if (v.state === 'playing') v.playing += now - v.since;
    else if (v.state === 'stalled') v.stall += now - v.since;
    v.since = now;
  }

  emit(type, fields) {
    const v = this.view;
    if (!v || v.ended) return;
    const now = this.env.now();
    const event = { seq: v.seq, type, ts: now, ...fields };
    v.seq += 1;
    if (v.started || type === 'error' || type === 'view_end') event.started = v.started;
    if (v.started && type !== 'first_frame') {
      this.accrue(now);
      event.playing_ms = Math.round(v.playing);
      event.stall_ms = Math.round(v.stall);
      v.playing = 0;
      v.stall = 0;
      if (this.bitrate !== null && event.bitrate_kbps === undefined) event.bitrate_kbps = this.bitrate;
    }
    if (type === 'view_end') v.ended = true;
    this.enqueue(v.id, event);
  }

  enqueue(viewId, event) {
    this.stats.events += 1;
    if (this.queue.length >= this.maxQueue) {
      const i = this.queue.findIndex((q) => q.event.type === 'heartbeat');
      this.queue.splice(i >= 0 ? i : 0, 1);
      this.stats.dropped += 1;
    }
    this.queue.push({ viewId, context: { ...this.context }, event });
  }

  on_loadstart() {
    if (!this.view && this.video.autoplay) this.startView();
  }

  on_play() {
    if (!this.view || this.view.ended) this.startView();
  }

  on_playing() {
    if (!this.view || this.view.ended) this.startView();
    const v = this.view;
    const now = this.env.now();
    if (!v.started) {
      v.started = true;
      v.state = 'playing';
      v.since = now;
      const ff = { startup_ms: Math.max(0, Math.round(now - v.start)) };
      if (this.bitrate !== null) ff.bitrate_kbps = this.bitrate;
      this.emit('first_frame', ff);
      this.flush(false);
      return;
    }
    const was = v.state;
    this.accrue(now);
    v.state = 'playing';
    if (was === 'stalled') this.emit('stall_end', {});
    else if (was === 'paused') this.emit('resume', {});
  }

  on_waiting() {
    const v = this.view;
    if (!v || !v.started || v.state !== 'playing' || this.video.seeking) return;
    this.accrue(this.env.now());
    this.emit('stall_start', {});
    v.state = 'stalled';
  }

  on_seeking() {
    const v = this.view;
    if (!v || !v.started || v.ended) return;
    this.accrue(this.env.now());
    this.emit('seek', {});
    // Time spent seeking is neither playing nor a stall; `playing` resumes the count.
    v.state = 'seeking';
  }

  on_pause() {
    const v = this.view;
    if (!v || !v.started || v.ended || this.video.ended) return;
    if (v.state !== 'playing' && v.state !== 'stalled' && v.state !== 'seeking') return;
    this.accrue(this.env.now());
    this.emit('pause', {});
    v.state = 'paused';
  }

  on_ended() {
    this.end('completed');
  }

  on_error() {
    const err = this.video.error;
    this.fail(err ? `MEDIA_ERR_${err.code}` : 'MEDIA_ERR', true);
  }

  on_emptied() {
    // The element was reset (a new source): the view that played on it is over.
    if (this.view && this.view.started && !this.view.ended) this.end('exit');
  }

  heartbeat() {
    const v = this.view;
    if (!v || !v.started || v.ended) return;
    this.stats.heartbeats += 1;
    const hb = {};
    const dropped = this.droppedFrames();
    if (dropped !== null && v.dropped !== null && dropped >= v.dropped) hb.dropped_frames = dropped - v.dropped;
    v.dropped = dropped;
    if (this.context.stream_type === 'live' && this.latency) {
      const ms = this.latency();
      if (Number.isFinite(ms) && ms >= 0) hb.latency_ms = Math.round(ms);
    }
    this.emit('heartbeat', hb);
  }

  droppedFrames() {
    const q = this.video.getVideoPlaybackQuality && this.video.getVideoPlaybackQuality();
    return q && Number.isFinite(q.droppedVideoFrames) ? q.droppedVideoFrames : null;
  }

  // --- what applications and adapters call ----------------------------------------------

  /** The viewer asked to play (a click on a custom play button, a player loading a source to
   * autoplay): the view, and its startup time, begin now. */
  playRequested() {
    this.guard(() => { if (!this.view || this.view.ended) this.startView(); })();
  }

  /** Ends the current view (`completed`, `exit` or `error`) and sends what is queued. */
  end(reason = 'exit') {
    this.guard(() => {
      if (!this.view || this.view.ended) return;
      this.emit('view_end', { reason });
      this.flush(false);
    })();
  }

  /** The rendition now played, kbps (`bitrate_change` when it changes). */
  setBitrate(kbps) {
    this.guard(() => {
      const b = Math.round(kbps);
      if (!(b > 0)) return;
      const prev = this.bitrate;
      if (prev !== null && b !== prev && this.view && this.view.started) {
        this.emit('bitrate_change', { bitrate_kbps: b, prev_bitrate_kbps: prev });
      }
      this.bitrate = b;
    })();
  }

  /** A player error: fatal ones end the view with reason `error`. */
  fail(code, fatal) {
    this.guard(() => {
      if (!this.view || this.view.ended) {
        // A fatal error before any play request is a failed attempt; a non-fatal one is noise.
        if (!fatal) return;
        this.startView();
      }
      this.emit('error', { code: String(code || 'unknown').slice(0, 64), fatal: !!fatal });
      if (fatal) {
        this.emit('view_end', { reason: 'error' });
      }
      this.flush(false);
    })();
  }

  /** Dimensions learnt later (e.g. the CDN from the first segment's host). */
  setContext(fields) {
    this.guard(() => {
      for (const k of ['cdn', 'player', 'protocol']) if (fields[k] && !this.context[k]) this.context[k] = String(fields[k]);
    })();
  }

  /** Live latency source, ms (called on every heartbeat). */
  setLatencySource(fn) { this.latency = fn; }

  /** The page is going: the view ends as `exit` and everything queued leaves by sendBeacon. */
  leave() {
    if (this.view && !this.view.ended) this.emit('view_end', { reason: 'exit' });
    this.flush(true);
  }

  /** Stops monitoring (ends the view as `exit`). */
  destroy() {
    this.end('exit');
    for (const [t, type, h] of this.listeners) t.removeEventListener(type, h);
    this.env.clearInterval(this.heartbeatTimer);
    this.env.clearInterval(this.flushTimer);
  }

  hls(hls) { this.guard(() => attachHls(this, hls), 'attach')(); return this; }

  dash(player) { this.guard(() => attachDash(this, player), 'attach')(); return this; }

  /** Shaka Player: attach before `player.load()` (the adapter watches its promise). */
  shaka(player) { this.guard(() => attachShaka(this, player), 'attach')(); return this; }

  // --- delivery ----------------------------------------------------------------------------

  /** The next body: consecutive queued events of one view, with its context. */
  nextBody() {
    if (!this.queue.length) return null;
    const first = this.queue[0];
    let n = 0;
    while (n < this.queue.length && n < MAX_EVENTS_PER_BODY && this.queue[n].viewId === first.viewId) n += 1;
    const view = { view_id: first.viewId, ...first.context };
    if (!view.cdn) view.cdn = 'unknown';
    // Until an adapter has said (an explicit option wins over it).
    if (!view.protocol) view.protocol = 'unknown';
    if (!view.player) view.player = `html5 qoe-web/${SDK_VERSION}`;
    const events = this.queue.slice(0, n).map((q) => q.event);
    return { n, text: () => JSON.stringify({ sent_at: this.env.now(), view, events }) };
  }

  /** Sends what is queued: by `sendBeacon` when the page is going (`beacon`), else by fetch. */
  flush(beacon) {
    if (beacon) {
      for (let body = this.nextBody(); body; body = this.nextBody()) {
        if (!this.env.beacon(this.url, body.text())) break;
        this.queue.splice(0, body.n);
        this.stats.bodies += 1;
      }
      return;
    }
    if (this.sending || this.env.now() < this.retryAt) return;
    this.sendNext();
  }

  sendNext() {
    const body = this.nextBody();
    if (!body) return;
    this.sending = true;
    const text = body.text();
    const sentEvents = this.queue.slice(0, body.n);
    const done = (ok, retryMs) => {
      this.sending = false;
      if (ok !== null) {
        // Delivered (or refused for good): those events leave the queue.
        for (const e of sentEvents) {
          const i = this.queue.indexOf(e);
          if (i >= 0) this.queue.splice(i, 1);
        }
        this.backoffMs = 0;
        if (ok) this.stats.bodies += 1; else this.stats.refused += 1;
        if (this.queue.length) this.sendNext();
        return;
      }
      this.stats.retries += 1;
      this.retryAt = this.env.now() + retryMs;
      this.env.setTimeout(this.guard(() => this.flush(false), 'retry'), retryMs);
    };
    const backoff = () => {
      this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs ? this.backoffMs * 2 : 1000);
      return this.backoffMs * (0.5 + this.env.random() / 2);
    };
    let sending;
    try { sending = this.env.send(this.url, text); } catch (e) { sending = Promise.reject(e); }
    Promise.resolve(sending).then((r) => {
      if (r.status >= 200 && r.status < 300) done(true, 0);
      else if (r.status === 429 || r.status === 503 || r.status === 408 || r.status >= 500) {
        done(null, r.retryAfter > 0 ? r.retryAfter * 1000 : backoff());
      } else done(false, 0);
    }, () => done(null, backoff()));
  }
}

/** hls.js: rendition bitrate, fatal and non-fatal errors, live latency, CDN host, player. */
function attachHls(m, hls) {
  const E = hls.constructor && hls.constructor.Events ? hls.constructor.Events : {};
  const ev = (name, fallback) => E[name] || fallback;
  const version = hls.constructor && hls.constructor.version;
  m.setContext({ player: `hls.js${version ? `/${version}` : ''}`, protocol: 'hls' });
  // Loading a source into an autoplaying element is the play request.
  let source = null;
  hls.on(ev('MANIFEST_LOADING', 'hlsManifestLoading'), m.guard((_, d) => {
    // A new source on the same element is a new view (hls.js keeps the element as it is).
    const url = d && d.url;
    if (source !== null && url !== source && m.view && m.view.started) m.end('exit');
    source = url;
    if (m.video.autoplay) m.playRequested();
  }, 'hls'));
  // The rendition the player switches to (as hls.js's own CMCD reports it).
  hls.on(ev('LEVEL_SWITCHING', 'hlsLevelSwitching'), m.guard((_, d) => {
    const level = hls.levels && hls.levels[d.level];
    if (level && level.bitrate) m.setBitrate(level.bitrate / 1000);
  }, 'hls'));
  hls.on(ev('FRAG_LOADED', 'hlsFragLoaded'), m.guard((_, d) => {
    if (!m.context.cdn && d && d.frag && d.frag.url) m.setContext({ cdn: new URL(d.frag.url).host });
  }, 'hls'));
  hls.on(ev('ERROR', 'hlsError'), m.guard((_, d) => {
    if (d && d.fatal) m.fail(d.details || d.type, true);
    else if (d && d.type !== 'mediaError' && d.details !== 'bufferStalledError') m.fail(d.details || d.type, false);
  }, 'hls'));
  m.setLatencySource(() => (Number.isFinite(hls.latency) ? hls.latency * 1000 : NaN));
}

/** dash.js: rendition bitrate, errors, live latency, player. */
function attachDash(m, player) {
  const events = (globalThis.dashjs && globalThis.dashjs.MediaPlayer && globalThis.dashjs.MediaPlayer.events) || {};
  const version = player.getVersion ? player.getVersion() : '';
  m.setContext({ player: `dash.js${version ? `/${version}` : ''}`, protocol: 'dash' });
  // dash.js may report one failure in several error events: the first ends the view, the
  // rest are ignored until the next manifest load.
  // A dynamic MPD is loaded again every minimumUpdatePeriod: only the first load of a source
  // is a play request (a refresh after a view ended must not start another).
  let failed = false;
  let source = null;
  player.on(events.MANIFEST_LOADING_STARTED || 'manifestLoadingStarted', m.guard(() => {
    const now = player.getSource ? player.getSource() : null;
    const url = typeof now === 'string' ? now : (now && now.url) || null;
    if (source !== null && url === source) return;
    source = url;
    failed = false;
    if (m.video.autoplay) m.playRequested();
  }, 'dash'));
  player.on(events.QUALITY_CHANGE_RENDERED || 'qualityChangeRendered', m.guard((e) => {
    if (e.mediaType === 'video' && e.newRepresentation && e.newRepresentation.bandwidth) {
      m.setBitrate(e.newRepresentation.bandwidth / 1000);
    }
  }, 'dash'));
  player.on(events.ERROR || 'error', m.guard((e) => {
    // The player's own code, as its CMCD `ec` carries it.
    const code = e && e.error ? (e.error.code !== undefined ? String(e.error.code) : e.error.message) : 'dash';
    if (failed) return;
    failed = true;
    m.fail(code, true);
  }, 'dash'));
  m.setLatencySource(() => {
    const s = player.getCurrentLiveLatency ? player.getCurrentLiveLatency() : NaN;
    return s * 1000;
  });
}

/**
 * Shaka Player: rendition bitrate, errors with Shaka's numeric codes (`1001` bad HTTP status,
 * `6007` licence request failed, ...; fatal when Shaka calls them CRITICAL), live latency, CDN
 * host of the first segment, player and protocol. Shaka's release build sends no play states
 * over CMCD, and a failed `load()` is reported only through its promise (no `error` event):
 * the adapter wraps `load` to see that failure, and passes the promise on unchanged.
 */
function attachShaka(m, player) {
  const S = globalThis.shaka || {};
  const version = (S.Player && S.Player.version) || '';
  m.setContext({ player: `shaka${version ? `/${version.replace(/^v/, '')}` : ''}` });
  const CRITICAL = (S.util && S.util.Error && S.util.Error.Severity && S.util.Error.Severity.CRITICAL) || 2;
  const SEGMENT = (S.net && S.net.NetworkingEngine && S.net.NetworkingEngine.RequestType
    && S.net.NetworkingEngine.RequestType.SEGMENT) ?? 1;
  // After a CRITICAL error nothing more is reported until the next load: the same failure can
  // reach the adapter twice (the error event and the load promise), and Shaka retries a live
  // stream that failed, failing again.
  let failed = false;
  const report = (err) => {
    if (!err || failed) return;
    const fatal = err.severity === undefined ? true : err.severity === CRITICAL;
    if (fatal) failed = true;
    const code = err.code !== undefined ? String(err.code) : (err.message || 'shaka');
    m.fail(code, fatal);
  };
  player.addEventListener('loading', m.guard(() => {
    // A new load on a played element is a new view.
    if (m.view && m.view.started) m.end('exit');
    failed = false;
    if (m.video.autoplay) m.playRequested();
  }, 'shaka'));
  const bitrate = m.guard(() => {
    const v = player.getVariantTracks && player.getVariantTracks().find((t) => t.active);
    if (v && v.bandwidth) m.setBitrate(v.bandwidth / 1000);
  }, 'shaka');
  player.addEventListener('adaptation', bitrate);
  player.addEventListener('variantchanged', bitrate);
  player.addEventListener('trackschanged', bitrate);
  player.addEventListener('error', m.guard((e) => report(e && e.detail), 'shaka'));
  player.addEventListener('loaded', m.guard(() => {
    const type = player.getManifestType ? String(player.getManifestType() || '').toLowerCase() : '';
    if (type) m.setContext({ protocol: type });
    bitrate();
  }, 'shaka'));
  const net = player.getNetworkingEngine && player.getNetworkingEngine();
  if (net && net.registerResponseFilter) {
    net.registerResponseFilter(m.guard((type, response) => {
      if (type === SEGMENT && !m.context.cdn && response && response.uri) {
        m.setContext({ cdn: new URL(response.uri).host });
      }
    }, 'shaka'));
  }
  const load = player.load;
  if (typeof load === 'function') {
    player.load = function loadWatched(...args) {
      const p = load.apply(this, args);
      Promise.resolve(p).catch(m.guard((err) => report(err), 'shaka'));
      return p;
    };
  }
  m.setLatencySource(() => {
    const s = player.getStats ? player.getStats().liveLatency : NaN;
    return Number.isFinite(s) && s > 0 ? s * 1000 : NaN;
  });
}

/**
 * Starts monitoring `video`. @param {HTMLMediaElement} video @param {Options} options
 * @returns {Monitor}
 */
export function monitor(video, options) {
  return new Monitor(video, options);
}

export const version = SDK_VERSION;
