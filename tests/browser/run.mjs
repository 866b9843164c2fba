// Builds the page (TypeScript from proto/ with protoc-gen-es, bundled by
// esbuild), serves it on its own origin, and drives it in Debian's
// Chromium through the gateway until it reports PASSED or FAILED; writes a
// screenshot of the final page.
//   node run.mjs <gateway-url> <page-port> <screenshot.png>
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const [gateway, port, screenshot] = process.argv.slice(2);
if (!gateway || !port || !screenshot) {
  console.error("usage: node run.mjs <gateway-url> <page-port> <screenshot.png>");
  process.exit(2);
}

const generated = spawnSync(join(here, "node_modules/.bin/buf"), ["generate"], { cwd: here, stdio: "inherit" });
if (generated.status !== 0) process.exit(1);
const bundle = await build({
  entryPoints: [join(here, "app.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  write: false,
  logLevel: "warning",
});
const files = {
  "/": ["text/html", readFileSync(join(here, "index.html"))],
  "/app.js": ["text/javascript", bundle.outputFiles[0].contents],
};
const server = createServer((request, response) => {
  const path = new URL(request.url, "http://page").pathname;
  const file = files[path];
  if (path === "/favicon.ico") {
    response.writeHead(204).end();
    return;
  }
  if (!file) {
    response.writeHead(404).end();
    return;
  }
  response.writeHead(200, { "content-type": file[0] }).end(file[1]);
});
await new Promise((resolve) => server.listen(Number(port), "127.0.0.1", resolve));

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
});
let passed = false;
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.log(`page: ${message.text()}`));
  await page.goto(`http://127.0.0.1:${port}/?gateway=${encodeURIComponent(gateway)}`);
  await page.waitForFunction(() => document.getElementById("result")?.textContent !== "running", null, {
    timeout: 60_000,
  });
  const result = await page.textContent("#result");
  const steps = await page.$$eval("#steps li", (items) => items.map((item) => item.textContent));
  console.log(steps.map((s) => `  - ${s}`).join("\n"));
  console.log(`order: ${await page.textContent("#status")}`);
  console.log(`csrf: ${await page.textContent("#csrf")}`);
  console.log(`result: ${result}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  passed = result === "PASSED";
} finally {
  await browser.close();
  server.close();
}
process.exit(passed ? 0 : 1);
