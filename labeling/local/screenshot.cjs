// Screenshot of Label Studio's labeling page (with the model's boxes offered), for the labeling guide.
//
//   node labeling/local/screenshot.cjs <task URL> <user> <password> <output.png>
//
// Needs Debian's chromium (apt-get install chromium) and playwright-core from npm, which downloads no
// browser: npm install --no-save --prefix .screenshot playwright-core@1.65.2 (NODE_PATH=.screenshot/node_modules).
// `python -m labeling.local --screenshot PATH` runs it on the first task of the round.
const { chromium } = require("playwright-core");

async function main() {
  const [url, user, password, output] = process.argv.slice(2);
  if (!output) {
    console.error("usage: node screenshot.cjs <task URL> <user> <password> <output.png>");
    process.exit(2);
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const origin = new URL(url).origin;
    await page.goto(`${origin}/user/login`);
    await page.fill('input[name="email"]', user);
    await page.fill('input[name="password"]', password);
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"], input[type="submit"]')]);
    await page.goto(url);
    // the image, and the offered boxes drawn over it
    await page.waitForSelector("canvas", { timeout: 60000 });
    await page.waitForTimeout(4000);
    await page.screenshot({ path: output });
    console.log(`screenshot: ${output}`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
