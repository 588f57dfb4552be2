// Opens /ops in headless Chromium, signs in with an ops token, watches the counters change
// after a customer creates a request over GraphQL, and keeps a screenshot as an artifact.
//
// Environment: ARREGLAME_URL, OPS_TOKEN, CUSTOMER_TOKEN, SCREENSHOT (path), CHROMIUM (path).
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.ARREGLAME_URL;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`${url}/ops`);
  // The page asks for the token first.
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#token", process.env.OPS_TOKEN);
  await page.click("#loginForm button");
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 15000 });

  const counter = (name) => page.$eval(`.counter[data-name="${name}"] b`, (b) => Number(b.textContent));
  await page.waitForSelector('.counter[data-name="unassigned"]');
  const before = await counter("unassigned");

  // A customer posts a request; nobody is online, so it ends UNASSIGNED at once.
  const created = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${process.env.CUSTOMER_TOKEN}` },
    body: JSON.stringify({
      query: "mutation($i: CreateServiceRequestInput!) { createServiceRequest(input: $i) { id } }",
      variables: { i: { latitude: -34.6037, longitude: -58.3816, address: "Av. Corrientes 1234", description: "Corte de pasto", squareMeters: 80 } },
    }),
  }).then((r) => r.json());
  assert.ok(created.data?.createServiceRequest?.id, JSON.stringify(created));

  await page.waitForFunction(
    (b) => Number(document.querySelector('.counter[data-name="unassigned"] b').textContent) > b,
    before, { timeout: 15000 });
  const after = await counter("unassigned");
  assert.equal(after, before + 1);
  // The event list shows the new request's events, and the map panels are drawn.
  await page.waitForFunction(() => document.getElementById("events").textContent.includes("ServiceRequestUnassigned"), null, { timeout: 15000 });
  await page.waitForSelector("#maps svg polygon.area");
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log(`ops dashboard: unassigned ${before} -> ${after}; screenshot ${process.env.SCREENSHOT}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
