// Opens the browser page in headless Chromium (Debian's package, driven by playwright-core;
// nothing is downloaded) and waits for its verdict in the title.
//
// Usage: node browser/run.mjs <page-url>   (CHROMIUM overrides /usr/bin/chromium)

import { chromium } from 'playwright-core';

const [url] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.log(`console: ${m.text()}`));
  page.on('pageerror', (e) => console.log(`page error: ${e}`));
  await page.goto(url);
  await page.waitForFunction(() => document.title !== 'running', null, { timeout: 30000 });
  const title = await page.title();
  console.log(await page.textContent('#log'));
  console.log(title);
  if (title === 'PASS') {
    console.log('all passed');
    code = 0;
  }
} catch (e) {
  console.log(`FAILED: ${e}`);
} finally {
  await browser.close();
}
process.exit(code);
