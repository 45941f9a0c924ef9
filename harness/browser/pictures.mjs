// Drives Debian's Chromium through the status pages' pictures after a real
// run: the shard timeline on a commit page, the branch history reached from
// it, a test's history reached from its test list, and the queue and fleet
// on the workers page. Each must be drawn (and carry its text alternative);
// each is saved as a screenshot, and the commit page once more at a phone's
// width.
//
//   node pictures.mjs BASE_URL REPO SHA TEST_NAME SCREENSHOT_DIR
//
// Exits 0 when all hold, 1 with the reason otherwise.
import { chromium } from 'playwright-core';

const [base, repo, sha, testName, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node pictures.mjs BASE_URL REPO SHA TEST_NAME SCREENSHOT_DIR');
  process.exit(2);
}
const fail = (why) => { console.error(why); process.exit(1); };
let step = 'starting Chromium';

/// Checks that `svg` is drawn with a real size and has a title and a
/// description; returns the description.
async function drawn(page, id) {
  const svg = page.locator(`svg#${id}`);
  await svg.waitFor({ timeout: 20000 });
  const box = await svg.boundingBox();
  if (!box || box.width < 200 || box.height < 60) fail(`${id}: drawn at ${JSON.stringify(box)}`);
  const desc = (await svg.locator(`desc#${id}-desc`).textContent()).trim();
  const title = (await svg.locator(`title#${id}-title`).textContent()).trim();
  if (!desc || !title) fail(`${id}: no title or description`);
  if ((await svg.getAttribute('role')) !== 'img') fail(`${id}: no role=img`);
  return desc;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const page = await context.newPage();

  step = 'the shard timeline';
  await page.goto(`${base}/commits/${repo}/${sha}`);
  const timelineDesc = await drawn(page, 'timeline');
  const bars = await page.locator('svg#timeline g.bar').count();
  const lost = await page.locator('svg#timeline rect.lost').count();
  if (bars < 6) fail(`timeline: ${bars} bars, expected one per run (6 shards at least)`);
  if (lost < 2) fail(`timeline: no lost run drawn (${lost} lost shapes incl. the legend): ${timelineDesc}`);
  if (!/lost runs/.test(timelineDesc)) fail(`timeline: the description misses the lost run: ${timelineDesc}`);
  await page.locator('svg#timeline').screenshot({ path: `${shots}/picture-timeline.png` });
  console.log(`timeline: ${bars} bars; ${timelineDesc}`);

  step = 'a test\'s history, from the commit page\'s test list';
  await page.locator('[data-testid=all-tests] summary').click();
  await page.locator('[data-testid=all-tests] a', { hasText: testName }).first().click();
  const testDesc = await drawn(page, 'test-history');
  const testMarks = await page.locator('svg#test-history a').count();
  if (testMarks < 3) fail(`test history: ${testMarks} commits, expected 3: ${testDesc}`);
  await page.locator('svg#test-history').screenshot({ path: `${shots}/picture-test-history.png` });
  console.log(`test history: ${testDesc}`);

  step = 'the branch history, from the commit page';
  await page.goto(`${base}/commits/${repo}/${sha}`);
  await page.locator('[data-testid=branch-history]').click();
  const historyDesc = await drawn(page, 'history');
  const links = page.locator('svg#history a');
  const commits = await links.count();
  if (commits < 3) fail(`history: ${commits} commits, expected 3: ${historyDesc}`);
  if (!/failed/.test(historyDesc) || !/passed/.test(historyDesc)) fail(`history: ${historyDesc}`);
  await page.locator('svg#history').screenshot({ path: `${shots}/picture-history.png` });
  // A mark leads to its commit.
  await links.last().click();
  await page.waitForURL(new RegExp(`/commits/${repo}/${sha}$`), { timeout: 10000 });
  console.log(`history: ${historyDesc}`);

  step = 'the queue and fleet on the workers page';
  await page.goto(`${base}/workers`);
  const fleetDesc = await drawn(page, 'fleet');
  if (await page.locator('svg#fleet path.waiting').count() < 1) fail('fleet: no line of jobs waiting');
  await page.locator('svg#fleet').screenshot({ path: `${shots}/picture-fleet.png` });
  console.log(`fleet: ${fleetDesc}`);

  step = 'the commit page at a phone\'s width';
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  const small = await phone.newPage();
  await small.goto(`${base}/commits/${repo}/${sha}`);
  await drawn(small, 'timeline');
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) fail(`the page is ${overflow}px wider than the phone's screen`);
  await small.screenshot({ path: `${shots}/picture-timeline-phone.png` });
  console.log('pictures ok');
} catch (error) {
  fail(`pictures test, ${step}: ${error.message}`);
} finally {
  await browser.close();
}
