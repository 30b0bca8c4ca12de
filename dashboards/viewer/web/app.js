// The dashboard viewer's page: draws a dashboard's panels from its own JSON (the file Grafana
// loads), asking the server for each panel's rows by dashboard uid, panel id, time range and
// variable values. It never sends SQL. Field config is applied as Grafana does for the parts
// these dashboards use: unit, decimals, thresholds and colour, legends, overrides by column
// name, data links, the groupingToMatrix transformation. A panel type it does not know gets a
// placeholder. Routes: / (dashboards), /d/<uid> (one dashboard), /alerts (alert rule states).
'use strict';

const PALETTE = ['#7eb26d', '#eab839', '#6ed0e0', '#ef843c', '#e24d42', '#1f78c1', '#ba43a9',
  '#705da0', '#508642', '#cca300', '#447ebc', '#c15c17', '#890f02', '#0a437c', '#6d1f62'];
const COLOURS = { green: '#73bf69', orange: '#ff9830', red: '#f2495c', yellow: '#fade2a',
  blue: '#5794f2', purple: '#b877d9', text: '#ccccdc', transparent: 'transparent' };
const RANGES = [['now-15m', 'Last 15 minutes'], ['now-30m', 'Last 30 minutes'], ['now-1h', 'Last 1 hour'],
  ['now-3h', 'Last 3 hours'], ['now-6h', 'Last 6 hours'], ['now-12h', 'Last 12 hours'],
  ['now-24h', 'Last 24 hours'], ['now-2d', 'Last 2 days'], ['now-7d', 'Last 7 days']];
const REFRESHES = ['off', '10s', '30s', '1m', '5m', '15m'];
const MAX_PARALLEL = 4;

const $ = (sel, el = document) => el.querySelector(sel);
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// --- the URL is the state: from, to, refresh, var-<name> (Grafana's own parameters) --------

function state() {
  const q = new URLSearchParams(location.search);
  const vars = {};
  for (const [k, v] of q) if (k.startsWith('var-')) (vars[k.slice(4)] ||= []).push(v);
  return { from: q.get('from'), to: q.get('to'), refresh: q.get('refresh'), at: q.get('at'), vars };
}

function go(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '') continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x)); else q.set(k, v);
  }
  history.pushState(null, '', `${path}${q.toString() ? `?${q}` : ''}`);
  route();
}
window.addEventListener('popstate', () => route());

function varParams(vars) {
  const out = {};
  for (const [k, v] of Object.entries(vars)) out[`var-${k}`] = v;
  return out;
}

// Epoch seconds of a Grafana time ('now', 'now-3h' or epoch seconds), as the server reads it.
function seconds(t) {
  const now = Math.floor(Date.now() / 1000);
  if (/^\d+$/.test(t)) return Number(t);
  const m = /^now(?:-(\d+)([smhd]))?$/.exec(t);
  if (!m) return now;
  return m[1] ? now - Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : now;
}

function durationS(text) {
  const m = /^(\d+)([smhd])$/.exec(text || '');
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : 0;
}

// Grafana's interval rounding (kbn.roundInterval), in seconds.
function roundInterval(s) {
  const steps = [[1.5, 1], [3.5, 2], [7.5, 5], [12.5, 10], [17.5, 15], [25, 20], [45, 30], [90, 60],
    [210, 120], [450, 300], [750, 600], [1050, 900], [1500, 1200], [2700, 1800], [5400, 3600],
    [9000, 7200], [16200, 10800], [32400, 21600], [86400, 43200], [604800, 86400]];
  for (const [below, value] of steps) if (s < below) return value;
  return 604800;
}

async function api(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x)); else if (v !== undefined && v !== null) q.set(k, v);
  }
  const r = await fetch(`${path}?${q}`);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// Requests in flight are limited, and counted on <body data-pending>, which tests wait on.
let inFlight = 0;
const waiting = [];
function pending(delta) {
  const n = Number(document.body.dataset.pending || 0) + delta;
  document.body.dataset.pending = String(n);
}
async function limited(fn) {
  pending(1);
  if (inFlight >= MAX_PARALLEL) await new Promise((r) => waiting.push(r));
  inFlight++;
  try { return await fn(); } finally {
    inFlight--;
    pending(-1);
    const next = waiting.shift();
    if (next) next();
  }
}

// --- values: units, decimals, thresholds -------------------------------------------------

function fixed(v, decimals) {
  if (decimals !== undefined && decimals !== null) return v.toFixed(decimals);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toFixed(Math.abs(v) < 1 ? 4 : Math.abs(v) < 100 ? 3 : 2)));
}

function scaled(v, decimals, steps) {
  let i = 0;
  while (i < steps.length - 1 && Math.abs(v) >= steps[i + 1][0]) i++;
  return `${fixed(v / steps[i][0], decimals)}${steps[i][1]}`;
}

// Grafana's formats for the units these dashboards use; `short` (Grafana's default) otherwise.
function format(v, cfg) {
  if (v === null || v === undefined || v === '') return '';
  if (typeof v !== 'number') return String(v);
  const d = cfg.decimals;
  switch (cfg.unit) {
    case 'percent': return `${fixed(v, d)}%`;
    case 'none': return fixed(v, d);
    case 'ms': return scaled(v, d, [[1, ' ms'], [1000, ' s'], [60000, ' min'], [3600000, ' hour']]);
    case 's': return scaled(v, d, [[1, ' s'], [60, ' min'], [3600, ' hour'], [86400, ' day']]);
    case 'h': return v < 1 ? `${fixed(v * 60, d)} min` : scaled(v, d, [[1, ' hour'], [24, ' day']]);
    case 'Kbits': return scaled(v, d, [[1, ' kb/s'], [1000, ' Mb/s'], [1e6, ' Gb/s']]);
    default: return scaled(v, d, [[1, ''], [1000, ' K'], [1e6, ' Mil'], [1e9, ' Bil']]);
  }
}

function colour(name) { return COLOURS[name] || name; }

function thresholdColour(v, cfg) {
  const steps = cfg.thresholds && cfg.thresholds.steps;
  if (!steps || typeof v !== 'number') return null;
  let c = steps[0].color;
  for (const s of steps) if (s.value === null || v >= s.value) c = s.color;
  return colour(c);
}

// A column's field config: the panel's defaults, then every override that names it.
function fieldConfig(panel, name) {
  const fc = panel.fieldConfig || {};
  const cfg = JSON.parse(JSON.stringify(fc.defaults || {}));
  for (const o of fc.overrides || []) {
    if (o.matcher && o.matcher.id === 'byName' && o.matcher.options === name) {
      for (const p of o.properties || []) {
        if (p.id.startsWith('custom.')) (cfg.custom ||= {})[p.id.slice(7)] = p.value;
        else cfg[p.id] = p.value;
      }
    }
  }
  return cfg;
}

function isNumericType(t) { return /^(Nullable\()?(U?Int|Float|Decimal)/.test(t); }
function isTimeType(t) { return /^(Nullable\()?DateTime/.test(t); }

// --- the panel frame: columns and rows, transformations applied -------------------------

function frame(result) {
  return {
    fields: result.columns.map((c, i) => ({ name: c.name, type: c.type, values: result.rows.map((r) => r[i]) })),
    length: result.rows.length,
  };
}

function transform(panel, f) {
  for (const t of panel.transformations || []) {
    if (t.id === 'groupingToMatrix') {
      const { columnField, rowField, valueField } = t.options;
      const col = f.fields.find((x) => x.name === columnField);
      const row = f.fields.find((x) => x.name === rowField);
      const val = f.fields.find((x) => x.name === valueField);
      if (!col || !row || !val) throw new Error(`groupingToMatrix: ${columnField}, ${rowField} or ${valueField} missing`);
      const rows = [...new Set(row.values)];
      const cols = [...new Set(col.values)];
      const cell = new Map();
      for (let i = 0; i < f.length; i++) cell.set(`${row.values[i]}\u0000${col.values[i]}`, val.values[i]);
      f = {
        fields: [{ name: `${rowField}\\${columnField}`, type: 'String', values: rows }].concat(cols.map((c) => ({
          name: String(c), type: val.type, values: rows.map((r) => (cell.has(`${r}\u0000${c}`) ? cell.get(`${r}\u0000${c}`) : null)),
        }))),
        length: rows.length,
      };
    } else {
      throw new Error(`transformation ${t.id} is not supported by this viewer`);
    }
  }
  return f;
}

// --- renderers -----------------------------------------------------------------------------

function dataLink(link, value, ctx) {
  const range = `from=${encodeURIComponent(ctx.from)}&to=${encodeURIComponent(ctx.to)}`;
  return link.url.replaceAll('${__value.raw}', encodeURIComponent(value)).replaceAll('${__url_time_range}', range);
}

function renderTable(panel, f, body, ctx) {
  let order = null;
  const draw = () => {
    const idx = [...Array(f.length).keys()];
    if (order) {
      const vals = f.fields[order.i].values;
      idx.sort((a, b) => {
        const x = vals[a]; const y = vals[b];
        const c = x === y ? 0 : x === null ? -1 : y === null ? 1 : x < y ? -1 : 1;
        return order.desc ? -c : c;
      });
    }
    const cfgs = f.fields.map((fl) => fieldConfig(panel, fl.name));
    const head = h('tr', {}, f.fields.map((fl, i) => h('th', {
      onclick: () => { order = { i, desc: order && order.i === i ? !order.desc : false }; draw(); },
    }, cfgs[i].displayName || fl.name, order && order.i === i ? (order.desc ? ' \u2193' : ' \u2191') : '')));
    const rows = idx.map((r) => h('tr', {}, f.fields.map((fl, i) => {
      const v = fl.values[r];
      const cfg = cfgs[i];
      const numeric = typeof v === 'number';
      const td = h('td', { class: numeric ? 'num' : '', 'data-value': v === null ? '' : String(v) });
      const text = format(v, cfg);
      const links = cfg.links || [];
      td.append(links.length && v !== null ? h('a', { href: dataLink(links[0], v, ctx), title: links[0].title }, text) : text);
      const mode = cfg.custom && cfg.custom.cellOptions && cfg.custom.cellOptions.type;
      const c = numeric && mode ? thresholdColour(v, cfg) : null;
      if (c && mode === 'color-background') { td.style.background = c; td.style.color = '#111'; }
      if (c && mode === 'color-text') td.style.color = c;
      return td;
    })));
    body.replaceChildren(h('table', { class: 'data' }, h('thead', {}, head), h('tbody', {}, rows)));
  };
  draw();
}

function reduce(values, calc) {
  const nums = values.filter((v) => typeof v === 'number');
  if (!nums.length) return null;
  switch (calc) {
    case 'mean': return nums.reduce((a, b) => a + b, 0) / nums.length;
    case 'max': return Math.max(...nums);
    case 'min': return Math.min(...nums);
    case 'sum': return nums.reduce((a, b) => a + b, 0);
    case 'last': return values[values.length - 1];
    case 'first': return values[0];
    default: return nums[nums.length - 1]; // lastNotNull
  }
}
const CALC_NAMES = { mean: 'Mean', max: 'Max', min: 'Min', sum: 'Total', last: 'Last', lastNotNull: 'Last *', first: 'First' };

function renderStat(panel, f, body) {
  const calc = ((panel.options || {}).reduceOptions || {}).calcs || ['lastNotNull'];
  const fields = f.fields.filter((fl) => isNumericType(fl.type));
  if (!fields.length) throw new Error('no numeric column to show');
  body.replaceChildren(h('div', { class: 'stats' }, fields.map((fl) => {
    const cfg = fieldConfig(panel, fl.name);
    const v = reduce(fl.values, calc[0]);
    const c = thresholdColour(v, cfg) || COLOURS.green;
    const mode = (panel.options || {}).colorMode || 'value';
    const el = h('div', { class: 'stat', 'data-field': fl.name, 'data-value': v === null ? '' : String(v) },
      h('div', { class: 'value', style: mode === 'value' ? `color:${c}` : '' }, v === null ? 'No data' : format(v, cfg)),
      fields.length > 1 ? h('div', { class: 'name' }, cfg.displayName || fl.name) : '');
    if (mode === 'background') { el.style.background = c; el.style.color = '#111'; }
    return el;
  })));
}

// Wide frames (time, values...) as they are; long frames (time, labels..., values...) become
// one series per label combination, as the data source plugin does.
function seriesOf(f) {
  const time = f.fields.find((fl) => isTimeType(fl.type)) || f.fields[0];
  const labels = f.fields.filter((fl) => fl !== time && !isNumericType(fl.type));
  const values = f.fields.filter((fl) => fl !== time && isNumericType(fl.type));
  const times = [...new Set(time.values.map((t) => Date.parse(`${t.replace(' ', 'T')}Z`) / 1000))].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  const series = new Map();
  for (let r = 0; r < f.length; r++) {
    const t = at.get(Date.parse(`${time.values[r].replace(' ', 'T')}Z`) / 1000);
    const label = labels.map((l) => l.values[r]).join(' ');
    for (const v of values) {
      const key = label ? (values.length > 1 ? `${v.name} ${label}` : label) : v.name;
      if (!series.has(key)) series.set(key, { name: key, field: v.name, values: new Array(times.length).fill(null) });
      series.get(key).values[t] = v.values[r];
    }
  }
  return { times, series: [...series.values()] };
}

function renderTimeseries(panel, f, body) {
  const { times, series } = seriesOf(f);
  if (!series.length) throw new Error('no numeric column to draw');
  const legendOpts = (panel.options || {}).legend || {};
  const calcs = legendOpts.calcs || [];
  const cfgs = series.map((s) => fieldConfig(panel, s.field));
  const chart = h('div', { class: 'chart' });
  const legend = legendOpts.showLegend === false ? '' : h('table', { class: 'legend' },
    h('tr', {}, h('th', {}, ''), calcs.map((c) => h('th', {}, CALC_NAMES[c] || c))),
    series.map((s, i) => h('tr', { 'data-series': s.name },
      h('td', {}, h('span', { class: 'swatch', style: `background:${PALETTE[i % PALETTE.length]}` }), s.name),
      calcs.map((c) => {
        const v = reduce(s.values, c);
        return h('td', { 'data-calc': c, 'data-value': v === null ? '' : String(v) }, format(v, cfgs[i]));
      }))));
  body.replaceChildren(chart, legend);
  const height = Math.max(80, body.clientHeight - (legend ? legend.offsetHeight : 0) - 8);
  const unitCfg = cfgs[0];
  const opts = {
    width: Math.max(100, body.clientWidth - 4),
    height,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: '#8e8e9e', grid: { stroke: '#2c3235' }, ticks: { stroke: '#2c3235' } },
      { stroke: '#8e8e9e', grid: { stroke: '#2c3235' }, ticks: { stroke: '#2c3235' }, size: 64,
        values: (u, ticks) => ticks.map((t) => format(t, unitCfg)) },
    ],
    series: [{}].concat(series.map((s, i) => ({
      label: s.name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false, points: { show: false },
    }))),
  };
  // uPlot draws in UTC like the dashboards (timezone: utc).
  opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC');
  const plot = new uPlot(opts, [times].concat(series.map((s) => s.values)), chart);
  new ResizeObserver(() => plot.setSize({ width: Math.max(100, body.clientWidth - 4), height })).observe(body);
}

const RENDERERS = { table: renderTable, stat: renderStat, timeseries: renderTimeseries };

// --- a dashboard ---------------------------------------------------------------------------

let refreshTimer = null;
let generation = 0;

async function showDashboard(uid) {
  const gen = ++generation;
  const st = state();
  const d = await api(`/api/dashboards/${encodeURIComponent(uid)}`);
  const from = st.from || (d.time || {}).from || 'now-3h';
  const to = st.to || (d.time || {}).to || 'now';
  const refresh = st.refresh || d.refresh || 'off';
  document.title = `${d.title} - QoE dashboards`;
  $('#title').textContent = d.title;
  const vars = await variableBar(d, st, from, to);
  if (gen !== generation) return;
  controls(from, to, refresh, (changes) => go(`/d/${uid}`, { from, to, refresh, ...varParams(vars), ...changes }));
  await dashboardLinks(d, from, to, vars);
  const grid = h('div', { class: 'grid' });
  $('#main').replaceChildren(grid);
  const ctx = { from, to };
  const panels = d.panels.map((p) => {
    const g = p.gridPos || { x: 0, y: 0, w: 12, h: 8 };
    const body = h('div', { class: 'body' });
    const el = h('section', {
      class: 'panel', 'data-panel-id': p.id, 'data-type': p.type, 'data-state': 'loading',
      style: `grid-column:${g.x + 1} / span ${g.w};grid-row:${g.y + 1} / span ${g.h}`, title: p.description || '',
    }, h('h2', {}, p.title || ''), body);
    grid.append(el);
    return { p, el, body };
  });
  const load = () => Promise.all(panels.map((x) => loadPanel(d, x, from, to, vars, ctx, gen)));
  await load();
  clearInterval(refreshTimer);
  const every = durationS(refresh);
  if (every) refreshTimer = setInterval(() => { if (gen === generation) load(); }, every * 1000);
}

async function loadPanel(d, { p, el, body }, from, to, vars, ctx, gen) {
  const render = RENDERERS[p.type];
  if (!render) {
    el.dataset.state = 'unsupported';
    body.replaceChildren(h('div', { class: 'panel-unsupported' },
      `Panel type "${p.type}" is not supported by this viewer (it draws time series, stat and table panels).`));
    return;
  }
  const range = seconds(to) - seconds(from);
  const interval = roundInterval(range / Math.max(100, body.clientWidth || 600));
  el.dataset.interval = String(interval);
  el.dataset.state = 'loading';
  try {
    const res = await limited(() => api('/api/query', { dashboard: d.uid, panel: p.id, from, to, interval, ...varParams(vars) }));
    if (gen !== generation) return;
    const f = transform(p, frame(res.results[0]));
    el.dataset.rows = String(res.results[0].rows.length);
    if (!f.length) {
      el.dataset.state = 'nodata';
      body.replaceChildren(h('div', { class: 'message' }, 'No data'));
      return;
    }
    render(p, f, body, ctx);
    el.dataset.state = 'done';
  } catch (e) {
    if (gen !== generation) return;
    el.dataset.state = 'error';
    body.replaceChildren(h('div', { class: 'error' }, e.message));
  }
}

// Selectors for the dashboard's variables; returns {name: [values]} as the URL has them
// ($__all when a query variable is left on All).
async function variableBar(d, st, from, to) {
  const bar = $('#variables');
  bar.replaceChildren();
  const vars = {};
  const list = (d.templating || {}).list || [];
  const apply = (name, values) => go(`/d/${d.uid}`, { from: st.from, to: st.to, refresh: st.refresh, ...varParams({ ...vars, [name]: values }) });
  await Promise.all(list.map(async (v) => {
    const chosen = st.vars[v.name];
    if (v.type === 'textbox') {
      vars[v.name] = chosen || [(v.current || {}).value || ''];
      const input = h('input', { value: vars[v.name][0], 'data-var': v.name, placeholder: v.label || v.name });
      input.addEventListener('change', () => apply(v.name, [input.value.trim()]));
      bar.append(h('div', { class: 'var' }, h('label', {}, v.label || v.name), input));
      return;
    }
    vars[v.name] = chosen || ['$__all'];
    let options = [];
    try { options = (await limited(() => api('/api/variable', { dashboard: d.uid, name: v.name, from, to }))).options; } catch (e) {
      options = [];
    }
    const all = vars[v.name].includes('$__all');
    const text = all ? 'All' : vars[v.name].length > 1 ? `${vars[v.name][0]} + ${vars[v.name].length - 1}` : vars[v.name][0];
    const button = h('button', { 'data-var': v.name }, text, ' \u25be');
    const box = h('div', { class: 'var' }, h('label', {}, v.label || v.name), button);
    button.addEventListener('click', () => {
      if ($('.dropdown', box)) { $('.dropdown', box).remove(); return; }
      const picked = new Set(all ? [] : vars[v.name]);
      const items = [h('label', {}, h('input', { type: 'checkbox', value: '$__all', ...(all ? { checked: '' } : {}) }), ' All')]
        .concat(options.map((o) => h('label', {}, h('input', { type: 'checkbox', value: o, ...(picked.has(o) ? { checked: '' } : {}) }), ` ${o}`)));
      const dd = h('div', { class: 'dropdown' }, items);
      dd.addEventListener('change', (ev) => {
        const value = ev.target.value;
        let values;
        if (value === '$__all') values = ['$__all'];
        else {
          if (ev.target.checked) picked.add(value); else picked.delete(value);
          values = picked.size ? [...picked] : ['$__all'];
        }
        apply(v.name, v.multi === false ? [value] : values);
      });
      box.append(dd);
    });
    bar.append(box);
  }));
  // Keep the file's order.
  const order = list.map((v) => v.name);
  [...bar.children].sort((a, b) => order.indexOf($('[data-var]', a).dataset.var) - order.indexOf($('[data-var]', b).dataset.var)).forEach((c) => bar.append(c));
  return vars;
}

function utc(s) { return new Date(s * 1000).toISOString().slice(0, 19).replace('T', ' '); }
function parseUtc(text) {
  const t = Date.parse(`${text.trim().replace(' ', 'T')}Z`);
  return Number.isNaN(t) ? null : String(Math.floor(t / 1000));
}

// Time range picker and auto-refresh; `change` gets the new from/to/refresh.
function controls(from, to, refresh, change, { withRefresh = true } = {}) {
  const preset = RANGES.find(([f]) => f === from && to === 'now');
  const select = h('select', { id: 'range' }, RANGES.map(([f, label]) => h('option', { value: f, ...(preset && preset[0] === f ? { selected: '' } : {}) }, label)),
    h('option', { value: 'custom', ...(preset ? {} : { selected: '' }) }, 'Custom (UTC)'));
  const fromIn = h('input', { id: 'from', size: 19, value: utc(seconds(from)) });
  const toIn = h('input', { id: 'to', size: 19, value: utc(seconds(to)) });
  const applyBtn = h('button', { id: 'apply' }, 'Apply');
  select.addEventListener('change', () => { if (select.value !== 'custom') change({ from: select.value, to: 'now' }); });
  applyBtn.addEventListener('click', () => {
    const f = parseUtc(fromIn.value); const t = parseUtc(toIn.value);
    if (f && t) change({ from: f, to: t });
  });
  const items = [select, fromIn, h('span', { class: 'muted' }, 'to'), toIn, applyBtn];
  if (withRefresh) {
    const r = h('select', { id: 'refresh', title: 'Auto-refresh' }, REFRESHES.map((x) => h('option', { value: x, ...(x === refresh ? { selected: '' } : {}) }, x === 'off' ? 'Off' : `Every ${x}`)));
    r.addEventListener('change', () => change({ refresh: r.value }));
    items.push(r);
  }
  $('#controls').replaceChildren(...items);
}

// The dashboards' links (type dashboards, by tag): a dropdown, keeping time and variables.
async function dashboardLinks(d, from, to, vars) {
  const nav = $('#nav');
  nav.replaceChildren();
  const all = await api('/api/dashboards');
  for (const link of d.links || []) {
    if (link.type !== 'dashboards') continue;
    const targets = all.filter((x) => (link.tags || []).every((t) => x.tags.includes(t)));
    const params = (x) => {
      const q = new URLSearchParams();
      if (link.keepTime) { q.set('from', from); q.set('to', to); }
      if (link.includeVars) for (const [k, vs] of Object.entries(vars)) for (const v of vs) q.append(`var-${k}`, v);
      return `/d/${x.uid}?${q}`;
    };
    const select = h('select', { class: 'links', 'aria-label': link.title },
      h('option', { value: '' }, `${link.title} \u25be`),
      targets.map((x) => h('option', { value: params(x), ...(x.uid === d.uid ? { disabled: '' } : {}) }, x.title)));
    select.addEventListener('change', () => { if (select.value) { history.pushState(null, '', select.value); route(); } });
    nav.append(select);
  }
  nav.append(h('a', { href: `/alerts?at=${encodeURIComponent(to)}` }, 'Alerts'));
}

// --- the alert rules ------------------------------------------------------------------------

async function showAlerts() {
  const gen = ++generation;
  const st = state();
  const at = st.at || 'now';
  document.title = 'Alert rules - QoE dashboards';
  $('#title').textContent = `Alert rules at ${utc(seconds(at))} UTC`;
  $('#variables').replaceChildren();
  $('#nav').replaceChildren(h('a', { href: '/' }, 'Dashboards'));
  controls(String(seconds(at) - 3600), at, '', (c) => go('/alerts', { at: c.to }), { withRefresh: false });
  $('#main').replaceChildren(h('div', { class: 'message', 'data-state': 'loading' }, 'Evaluating the rules...'));
  let doc;
  try { doc = await limited(() => api('/api/alerts', { at })); } catch (e) {
    $('#main').replaceChildren(h('div', { class: 'error' }, e.message));
    return;
  }
  if (gen !== generation) return;
  const order = { firing: 0, pending: 1, error: 2, nodata: 3, normal: 4 };
  const rules = doc.rules.slice().sort((a, b) => order[a.state] - order[b.state]);
  const counts = rules.reduce((m, r) => ({ ...m, [r.state]: (m[r.state] || 0) + 1 }), {});
  const region = (i) => `/d/qoe-region-cdn?var-region=${encodeURIComponent(i.region)}&var-cdn=${encodeURIComponent(i.cdn)}&from=${doc.at - 3 * 3600}&to=${doc.at}`;
  $('#main').replaceChildren(
    h('p', { class: 'muted' }, `Evaluated as Grafana does: each rule's query every ${rules[0] ? rules[0].interval_s : 60} s up to ${utc(doc.at)} UTC, its pending period, stale series resolved after two evaluations. `,
      Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(', ')),
    h('table', { class: 'data alerts', id: 'alerts' },
      h('thead', {}, h('tr', {}, ['State', 'Rule', 'Pending period', 'Labels', 'Instances (region x CDN: value)'].map((x) => h('th', {}, x)))),
      h('tbody', {}, rules.map((r) => h('tr', { 'data-rule': r.uid, 'data-state': r.state },
        h('td', {}, h('span', { class: `badge ${r.state}` }, r.state === 'nodata' ? 'no data' : r.state)),
        h('td', {}, r.title),
        h('td', {}, `${r.for_s / 60} min`),
        h('td', { class: 'muted' }, Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(' ')),
        h('td', {}, r.instances.length ? h('ul', {}, r.instances.map((i) => h('li', {},
          h('span', { class: `badge ${i.state}` }, i.state), ' ',
          h('a', { href: region(i) }, `${i.region} x ${i.cdn}`), i.value === null ? ' (no value this evaluation)' : `: ${fixed(i.value)}`))) : ''))))),
  );
}

// --- the list of dashboards ------------------------------------------------------------------

async function showHome() {
  ++generation;
  document.title = 'QoE dashboards';
  $('#title').textContent = 'Dashboards';
  $('#variables').replaceChildren();
  $('#controls').replaceChildren();
  $('#nav').replaceChildren(h('a', { href: '/alerts' }, 'Alerts'));
  const all = await api('/api/dashboards');
  $('#main').replaceChildren(h('ul', { class: 'home-list' }, all.map((d) => h('li', {}, h('a', { href: `/d/${d.uid}` }, d.title)))),
    h('p', {}, h('a', { href: '/alerts' }, 'Alert rules and their state')));
}

// <body data-ready> is '1' once the latest navigation has drawn everything (tests wait on it:
// between a click and the new dashboard's first request, the old panels are still on the page).
let routes = 0;
async function route() {
  const mine = ++routes;
  document.body.dataset.ready = '0';
  clearInterval(refreshTimer);
  const path = location.pathname;
  try {
    if (path.startsWith('/d/')) await showDashboard(decodeURIComponent(path.slice(3)));
    else if (path === '/alerts') await showAlerts();
    else await showHome();
  } catch (e) {
    $('#main').replaceChildren(h('div', { class: 'error' }, e.message));
  }
  if (mine === routes) document.body.dataset.ready = '1';
}

// Links inside the page (data links, the dashboards list) stay in the page.
document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a');
  if (!a || a.origin !== location.origin || ev.ctrlKey || ev.metaKey) return;
  ev.preventDefault();
  history.pushState(null, '', a.pathname + a.search);
  route();
});

document.body.dataset.pending = '0';
route();
