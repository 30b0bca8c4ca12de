import puppeteer from 'puppeteer-core';
const browser = await puppeteer.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'], defaultViewport: { width: 1600, height: 1000 }, protocolTimeout: 30000 });
const page = await browser.newPage();
page.on('console', (m) => console.log('console', m.type(), m.text()));
page.on('pageerror', (e) => console.log('pageerror', e.message));
const S = 1796494200;
const t0 = Date.now();
await page.goto(`http://127.0.0.1:3000/d/${process.argv[2]}?from=${S}&to=${S + 1800}&refresh=off`);
for (let i = 0; i < 20; i++) {
  await new Promise((r) => setTimeout(r, 1000));
  try {
    const st = await page.evaluate(() => [document.body.dataset.ready, document.body.dataset.pending, [...document.querySelectorAll('section.panel')].map((e) => e.dataset.state).join(',')]);
    console.log(Date.now() - t0, st);
    if (st[1] === '0' && !st[2].includes('loading')) break;
  } catch (e) { console.log('eval failed', e.message); }
}
await page.screenshot({ path: `/tmp/${process.argv[2]}.png`, fullPage: true });
await browser.close();
