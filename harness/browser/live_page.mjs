// Drives Debian's Chromium through Warren's status pages while a commit runs:
// the commit list must turn the commit from running to passed without a
// reload, and the commit page must follow the job's output live.
//
//   node live_page.mjs BASE_URL REPO SHA SCREENSHOT_DIR
//
// Exits 0 when both hold, 1 with the reason otherwise.
import { chromium } from 'playwright-core';

const [base, repo, sha, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node live_page.mjs BASE_URL REPO SHA SCREENSHOT_DIR');
  process.exit(2);
}
const fail = (why) => { console.error(why); process.exit(1); };
// Which step a timeout happened in.
let step = 'starting Chromium';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  step = 'opening the commit list';
  const list = await context.newPage();
  await list.goto(`${base}/`);
  const row = list.locator(`#c-${repo}-${sha}`);
  await row.waitFor({ timeout: 20000 });
  const first = (await row.locator('[data-testid=status]').textContent()).trim();
  if (!first.includes('running')) fail(`the commit was not running when the page opened: ${first}`);
  // A mark that a reload would wipe.
  await list.evaluate(() => { window.warrenMark = 'kept'; });

  step = 'following the live log on the commit page';
  const detail = await context.newPage();
  await detail.goto(`${base}/commits/${repo}/${sha}`);
  const log = detail.locator('[data-testid=live-log]').first();
  await log.waitFor({ timeout: 20000 });
  await detail.waitForFunction(
    () => /line 3/.test(document.querySelector('[data-testid=live-log]')?.textContent || ''),
    null, { timeout: 30000 });
  const partial = await log.textContent();
  if (/line 20/.test(partial)) fail('the whole output was there at once: not live');
  await detail.screenshot({ path: `${shots}/status-page-live-log.png`, fullPage: true });
  // More lines arrive while the page stays open: it follows the job.
  const seen = (partial.match(/line \d+/g) || []).length;
  await detail.waitForFunction(
    (n) => ((document.querySelector('[data-testid=live-log]')?.textContent || '').match(/line \d+/g) || []).length > n,
    seen, { timeout: 30000 });

  step = 'waiting for the list to show the verdict';
  await list.waitForFunction(
    (id) => (document.getElementById(id)?.querySelector('[data-testid=status]')?.textContent || '').includes('passed'),
    `c-${repo}-${sha}`, { timeout: 60000 });
  const mark = await list.evaluate(() => window.warrenMark);
  if (mark !== 'kept') fail('the list page reloaded instead of updating live');
  await list.screenshot({ path: `${shots}/status-page-commits.png`, fullPage: true });

  step = 'waiting for the commit page to show the verdict and the whole output';
  // The commit page reloads itself once the verdict is in: the full output.
  await detail.waitForFunction(
    () => (document.getElementById('commit-status')?.textContent || '').includes('passed'),
    null, { timeout: 30000 });
  await detail.waitForFunction(() => /line 20/.test(document.body.textContent), null, { timeout: 30000 });
  console.log('live page ok: running → passed without a reload; live log followed');
} catch (error) {
  fail(`browser test, ${step}: ${error.message}`);
} finally {
  await browser.close();
}
