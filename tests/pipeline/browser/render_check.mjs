// Load a `dvc plots show` page in headless Chromium with the network cut off, and report what rendered.
//
//   node tests/pipeline/browser/render_check.mjs PAGE.html SCREENSHOT.png
//
// Environment: CHROMIUM, the browser to drive (default /usr/bin/chromium); RENDER_TIMEOUT_MS, how long to
// wait for every plot to draw (default 20000).
//
// Prints one JSON object: the Vega plots found and how many drew an <svg>/<canvas>, every <img> with its
// naturalWidth, failed requests, requests that tried to leave the machine (all are aborted), console
// errors and uncaught page errors. Exits 0 whenever the page could be loaded; the caller judges.
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { readFileSync } from "node:fs";

const [page_path, screenshot] = process.argv.slice(2);
const executable = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = Number(process.env.RENDER_TIMEOUT_MS || 20000);
if (!page_path || !screenshot) {
  console.error("usage: render_check.mjs PAGE.html SCREENSHOT.png");
  process.exit(2);
}

const report = { failedRequests: [], externalRequests: [], consoleErrors: [], pageErrors: [] };
const browser = await chromium.launch({
  executablePath: executable,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // Offline: anything that is not a local file is recorded and refused.
  await context.route((url) => url.protocol !== "file:", (route) => {
    report.externalRequests.push(route.request().url());
    return route.abort("internetdisconnected");
  });
  const page = await context.newPage();
  page.on("requestfailed", (request) =>
    report.failedRequests.push(`${request.url()} (${request.failure()?.errorText})`));
  page.on("console", (message) => {
    if (message.type() === "error") report.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));

  // vega-embed replaces each plot div's content, script included, so take the plot ids from the source.
  const ids = [...readFileSync(page_path, "utf8").matchAll(/vegaEmbed\('#([^']+)'/g)].map((match) => match[1]);
  await page.goto(pathToFileURL(path.resolve(page_path)).href, { waitUntil: "load" });
  const state = (ids) => {
    const drawn = (id) => Boolean(document.getElementById(id)?.querySelector("svg.marks, canvas.marks"));
    return {
      vegaPlots: ids,
      vegaRendered: ids.filter(drawn),
      vegaMessages: ids.filter((id) => !drawn(id)).map((id) => document.getElementById(id)?.textContent.trim()),
      images: [...document.images].map((img) => ({ src: img.getAttribute("src"), complete: img.complete,
                                                   naturalWidth: img.naturalWidth })),
    };
  };
  try {
    await page.waitForFunction((ids) =>
      ids.every((id) => document.getElementById(id)?.querySelector("svg.marks, canvas.marks")) &&
      [...document.images].every((img) => img.complete), ids, { timeout, polling: 100 });
  } catch (error) {
    report.timeout = String(error).split("\n")[0];
  }
  Object.assign(report, await page.evaluate(state, ids));
  await page.screenshot({ path: screenshot, fullPage: true });
  report.screenshot = path.resolve(screenshot);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report, null, 2));
