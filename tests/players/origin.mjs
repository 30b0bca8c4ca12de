// The test origin: publishes pre-rendered segments (content.sh) as live HLS and DASH on a
// wall-clock schedule, serves the player page and the players' scripts, and injects faults per
// scenario. Every URL of a page starts with /s/<scenario>/, so concurrent pages each get their
// own fault, timed from that page's first media request:
//   none      nothing
//   stall     media segments asked for between 15 s and 25 s are held until 25 s
//   missing   every manifest answers 404
//   throttle  from 15 s on, media segments are sent at 45 kB/s (between the two renditions)
//   gone      from 12 s on, every media segment answers 404 (a failure after the start)
//
// Live schedule: at start, INITIAL segments are already "published"; one more every 2 s.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const SEGMENT_MS = 2000;
const INITIAL = 4;
const WINDOW = 6;

function vodSegments(playlist) {
  // [{ extinf, uri }] of an ffmpeg VOD media playlist.
  const lines = playlist.split('\n');
  const out = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].startsWith('#EXTINF')) out.push({ extinf: lines[i], uri: lines[i + 1] });
  }
  return out;
}

export function startOrigin({ contentDir, pageDir, modulesDir, sdkFile, port = 0 }) {
  const started = Date.now();
  const firstRequest = new Map(); // scenario -> ms of its first media request
  const media = {};
  for (const v of ['0', '1']) {
    media[v] = vodSegments(fs.readFileSync(path.join(contentDir, 'hls', `stream_${v}.m3u8`), 'utf8'));
  }
  const staticMpd = fs.readFileSync(path.join(contentDir, 'dash', 'manifest.mpd'), 'utf8');
  const available = () => Math.min(media['0'].length, INITIAL + Math.floor((Date.now() - started) / SEGMENT_MS));
  const log = [];

  function livePlaylist(v) {
    const n = available();
    const first = Math.max(0, n - WINDOW);
    const lines = ['#EXTM3U', '#EXT-X-VERSION:7', '#EXT-X-TARGETDURATION:2', `#EXT-X-MEDIA-SEQUENCE:${first}`,
      '#EXT-X-INDEPENDENT-SEGMENTS', `#EXT-X-MAP:URI="init_${v}.mp4"`];
    const epoch0 = started - INITIAL * SEGMENT_MS;
    lines.push(`#EXT-X-PROGRAM-DATE-TIME:${new Date(epoch0 + first * SEGMENT_MS).toISOString()}`);
    for (const s of media[v].slice(first, n)) lines.push(s.extinf, s.uri);
    return lines.join('\n') + '\n';
  }

  function liveMpd(base) {
    const ast = new Date(started - INITIAL * SEGMENT_MS).toISOString();
    return staticMpd
      .replace('type="static"', `type="dynamic" availabilityStartTime="${ast}" publishTime="${new Date().toISOString()}" minimumUpdatePeriod="PT10S" timeShiftBufferDepth="PT12S" suggestedPresentationDelay="PT6S"`)
      .replace(/\s*mediaPresentationDuration="[^"]*"/, '')
      .replace('</MPD>', `\t<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="${base}/time"/>\n</MPD>`);
  }

  function sendFile(res, file, type, throttle) {
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404, { 'cache-control': 'no-store' }); res.end(); return; }
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store', 'access-control-allow-origin': '*', 'content-length': data.length });
      if (!throttle) { res.end(data); return; }
      // 45 kB/s in 100 ms slices.
      const slice = 4500;
      let at = 0;
      const tick = () => {
        if (res.destroyed) return;
        const end = Math.min(data.length, at + slice);
        res.write(data.subarray(at, end));
        at = end;
        if (at >= data.length) res.end(); else setTimeout(tick, 100);
      };
      tick();
    });
  }

  const types = { '.m3u8': 'application/vnd.apple.mpegurl', '.mpd': 'application/dash+xml', '.m4s': 'video/iso.segment',
    '.mp4': 'video/mp4', '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.map': 'application/json' };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://origin');
    const base = `http://127.0.0.1:${server.address().port}`;
    if (url.pathname === '/time') {
      res.writeHead(200, { 'content-type': 'text/plain', 'access-control-allow-origin': '*', 'cache-control': 'no-store' });
      res.end(new Date().toISOString());
      return;
    }
    if (url.pathname.startsWith('/vendor/')) {
      const file = path.join(modulesDir, path.normalize(url.pathname.slice('/vendor/'.length)));
      if (!file.startsWith(modulesDir)) { res.writeHead(403); res.end(); return; }
      return sendFile(res, file, types[path.extname(file)] || 'application/octet-stream');
    }
    if (url.pathname === '/sdk/qoe.min.js' && sdkFile) {
      return sendFile(res, sdkFile, 'text/javascript');
    }
    if (url.pathname === '/player.html') {
      return sendFile(res, path.join(pageDir, 'player.html'), 'text/html');
    }
    const m = url.pathname.match(/^\/s\/([a-z0-9-]+)\/(hls|dash)\/([A-Za-z0-9_.]+)$/);
    if (!m) { res.writeHead(404); res.end(); return; }
    const [, scenario, kind, name] = m;
    const fault = scenario.split('-')[0];
    const ext = path.extname(name);
    const isManifest = ext === '.m3u8' || ext === '.mpd';
    log.push({ at: Date.now(), scenario, name });
    if (isManifest) {
      if (fault === 'missing') { res.writeHead(404, { 'access-control-allow-origin': '*', 'cache-control': 'no-store' }); res.end(); return; }
      res.writeHead(200, { 'content-type': types[ext], 'cache-control': 'no-store', 'access-control-allow-origin': '*' });
      if (kind === 'hls' && name === 'master.m3u8') res.end(fs.readFileSync(path.join(contentDir, 'hls', 'master.m3u8')));
      else if (kind === 'hls') res.end(livePlaylist(name.match(/stream_(\d)/)?.[1] ?? '0'));
      else res.end(liveMpd(base));
      return;
    }
    const file = path.join(contentDir, kind, name);
    if (ext !== '.m4s') return sendFile(res, file, types[ext] || 'application/octet-stream');
    if (!firstRequest.has(scenario)) firstRequest.set(scenario, Date.now());
    const since = Date.now() - firstRequest.get(scenario);
    if (fault === 'gone' && since >= 12000) {
      res.writeHead(404, { 'access-control-allow-origin': '*', 'cache-control': 'no-store' });
      res.end();
      return;
    }
    if (fault === 'stall' && since >= 15000 && since < 25000) {
      setTimeout(() => sendFile(res, file, types[ext]), 25000 - since);
      return;
    }
    sendFile(res, file, types[ext], fault === 'throttle' && since >= 15000);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve({ server, log, base: `http://127.0.0.1:${server.address().port}` })));
}
