// Loads the dashboard in headless Chromium (Debian's, driven by playwright-core), waits for live
// data (the page marks <body data-live="1"> at the first window event of /v1/stream), saves a
// screenshot and prints what the page shows as JSON. Usage: node dashboard.js URL SCREENSHOT.
const { chromium } = require("playwright-core");

const [url, shot] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CAMPO_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector('body[data-live="1"]', { timeout: 45000 });
  await page.waitForTimeout(1000); // let the forecasts of the first live windows draw
  await page.screenshot({ path: shot });
  const info = await page.evaluate(() => ({
    tiles: document.querySelectorAll(".tile").length,
    sparklines: document.querySelectorAll("svg polyline").length,
    bands: document.querySelectorAll("svg polygon").length,
    status: document.getElementById("status").textContent,
    hz: [...document.querySelectorAll(".tile .hz")].map((e) => e.textContent),
  }));
  console.log(JSON.stringify({ ...info, errors }));
  await browser.close();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
