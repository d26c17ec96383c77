// Opens the dashboard in headless Chromium, says READY once its feed is live, then waits for
// the counts named on its standard input (one JSON line) and prints what the page shows.
// Usage: node dashboard.mjs URL SCREENSHOT_PATH   (run by tests/dashboard.rs)
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, shot] = process.argv.slice(2);
const origin = new URL(url).origin;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const elsewhere = [];
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("request", (r) => { if (!r.url().startsWith(origin)) elsewhere.push(r.url()); });
  page.on("pageerror", (e) => failures.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(
    () => document.getElementById("conn").textContent === "live" && document.getElementById("store").textContent === "ok",
    null, { timeout: 20000 });
  console.log("READY");
  const lines = createInterface({ input: process.stdin });
  const want = JSON.parse(await new Promise((resolve) => lines.once("line", resolve)));
  await page.waitForFunction(
    (n) => Number(document.getElementById("total").textContent) >= n, want.total, { timeout: 20000 },
  ).catch(() => {});
  // The page polls the open breakers every 2 s.
  await page.waitForFunction(
    (n) => document.querySelectorAll("#breakers tbody tr").length >= n, want.breakers || 0, { timeout: 10000 },
  ).catch(() => {});
  // Let anything extra arrive (there should be nothing), and a render pass run.
  await page.waitForTimeout(1500);
  const got = await page.evaluate(() => {
    const table = (id, attr) => Object.fromEntries([...document.querySelectorAll("#" + id + " tbody tr")].map(
      (tr) => [tr.dataset[attr], { count: Number(tr.querySelector(".count").textContent), refused: Number(tr.querySelector(".refused").textContent) }]));
    return {
      total: Number(document.getElementById("total").textContent),
      refused: Number(document.getElementById("refused").textContent),
      instance: document.getElementById("instance").textContent,
      store: document.getElementById("store").textContent,
      live: Number(document.getElementById("live").textContent),
      instances: table("instances", "instance"),
      routes: table("routes", "route"),
      breakers: [...document.querySelectorAll("#breakers tbody tr")].map((tr) => tr.dataset.upstream),
      feed_rows: document.querySelectorAll("#feed tbody tr").length,
      notice: document.getElementById("notices").textContent,
      cookie_visible_to_script: document.cookie.includes("fleetgate_admin"),
    };
  });
  await page.screenshot({ path: shot, fullPage: true });
  console.log("RESULT " + JSON.stringify({ got, elsewhere, failures }));
} finally {
  await browser.close();
}
