// Opens /ops in headless Chromium, signs in with an ops token, watches the counters change
// after a customer creates a request over GraphQL, finds the request in the attention list
// (it ends UNASSIGNED: nobody is online) and opens its trail with one click, checks the
// legend and the charts, loads nothing from anywhere but the engine, and lays out on a
// phone without horizontal overflow. Keeps a desktop and a phone screenshot as artifacts.
//
// Environment: ARREGLAME_URL, OPS_TOKEN, CUSTOMER_TOKEN, SCREENSHOT (desktop path),
// SCREENSHOT_PHONE (phone path; default SCREENSHOT with -phone), CHROMIUM (path).
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.ARREGLAME_URL;
const shotDesktop = process.env.SCREENSHOT;
const shotPhone = process.env.SCREENSHOT_PHONE || shotDesktop.replace(/\.png$/, "") + "-phone.png";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const origin = new URL(url).origin;

// A page that records every URL it asks for, signed in, with the live feed up.
async function openDashboard(options) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const foreign = [], errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(origin + "/") && !u.startsWith("data:")) foreign.push(u);
  });
  await page.goto(`${url}/ops`);
  // The page asks for the token first.
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#token", process.env.OPS_TOKEN);
  await page.click("#loginForm button");
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 15000 });
  return { context, page, foreign, errors };
}

async function assertTrailOneClickAway(page, id) {
  const row = `#attention tr[data-id="${id}"]`;
  await page.waitForSelector(row, { timeout: 15000 });
  assert.match(await page.textContent(row), /UNASSIGNED/);
  await page.click(`${row} td:first-child`);
  await page.waitForSelector(`#trail [data-trail="${id}"]`, { timeout: 15000 });
  const trail = await page.textContent("#trail");
  assert.match(trail, /UNASSIGNED/);
  assert.match(trail, /ServiceRequestCreated/);
  assert.equal(await page.inputValue("#trailId"), id);
}

async function assertChartsDrawn(page) {
  // Three inline SVG charts, each with its paths and points; the request is counted.
  await page.waitForFunction(() => document.querySelectorAll("#charts .chart svg").length === 3, null, { timeout: 15000 });
  await page.waitForFunction(() => /\b1 in 15 min/.test(document.querySelector('[data-chart="created"] h3').textContent),
    null, { timeout: 20000 });
  const shape = await page.$$eval("#charts .chart", (charts) => charts.map((c) => ({
    id: c.dataset.chart,
    paths: c.querySelectorAll("svg path").length,
    points: c.querySelectorAll("svg circle.pt").length,
    d: c.querySelector("svg path").getAttribute("d"),
  })));
  const byId = Object.fromEntries(shape.map((s) => [s.id, s]));
  assert.deepEqual(Object.keys(byId).sort(), ["acceptance", "assignment", "created"]);
  assert.equal(byId.created.paths, 1);
  assert.equal(byId.created.points, 15, "a point per minute of creations");
  assert.match(byId.created.d, /^M[\d.]+ [\d.]+(L[\d.]+ [\d.]+){14}$/);
  assert.equal(byId.assignment.paths, 2, "p50 and p99");
  assert.equal(byId.acceptance.paths, 1);
  const box = await page.$eval('[data-chart="created"] svg', (svg) => svg.getBoundingClientRect().height);
  assert.ok(box > 40, `the chart has a height (${box})`);
}

let failed = false;
try {
  // Desktop.
  const desktop = await openDashboard({ viewport: { width: 1400, height: 900 } });
  const page = desktop.page;
  const counter = (name) => page.$eval(`.counter[data-name="${name}"] b`, (b) => Number(b.textContent));
  await page.waitForSelector('.counter[data-name="unassigned"]');
  const before = await counter("unassigned");

  // The legend explains the map's symbols, the attention kinds and the chart series.
  const legend = await page.textContent("#legend");
  for (const words of ["worker available", "worker holding an offer", "worker busy", "open request",
    "STALLED_PENDING", "OFFER_OVERDUE", "UNASSIGNED", "requests created per minute",
    "p50", "p99", "acceptance rate"]) {
    assert.ok(legend.includes(words), `legend names ${words}: ${legend}`);
  }
  assert.ok(await page.$$eval("#legend svg", (s) => s.length) >= 9, "legend symbols drawn");

  // A customer posts a request; nobody is online, so it ends UNASSIGNED at once.
  const created = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${process.env.CUSTOMER_TOKEN}` },
    body: JSON.stringify({
      query: "mutation($i: CreateServiceRequestInput!) { createServiceRequest(input: $i) { id } }",
      variables: { i: { latitude: -34.6037, longitude: -58.3816, address: "Av. Corrientes 1234", description: "Corte de pasto", squareMeters: 80 } },
    }),
  }).then((r) => r.json());
  const id = created.data?.createServiceRequest?.id;
  assert.ok(id, JSON.stringify(created));

  await page.waitForFunction(
    (b) => Number(document.querySelector('.counter[data-name="unassigned"] b').textContent) > b,
    before, { timeout: 15000 });
  const after = await counter("unassigned");
  assert.equal(after, before + 1);
  // The event list shows the new request's events, and the map panels are drawn.
  await page.waitForFunction(() => document.getElementById("events").textContent.includes("ServiceRequestUnassigned"), null, { timeout: 15000 });
  await page.waitForSelector("#maps svg polygon.area");
  // The request is on the attention list, one click from its trail.
  await assertTrailOneClickAway(page, id);
  await assertChartsDrawn(page);
  await page.screenshot({ path: shotDesktop, fullPage: true });
  assert.deepEqual(desktop.foreign, [], "the page loads nothing from elsewhere");
  assert.deepEqual(desktop.errors, [], "no script errors");
  await desktop.context.close();

  // A phone: one column, nothing wider than the screen, the same list and trail.
  const phone = await openDashboard({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const p = phone.page;
  await p.waitForSelector('.counter[data-name="unassigned"]');
  await p.waitForSelector("#maps svg polygon.area");
  await assertChartsDrawn(p);
  await assertTrailOneClickAway(p, id);
  const layout = await p.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    columns: getComputedStyle(document.querySelector("main")).gridTemplateColumns.split(" ").length,
    attentionFirst: document.querySelector(".p-attention").getBoundingClientRect().top <
      document.querySelector(".p-counters").getBoundingClientRect().top,
    widest: [...document.querySelectorAll("body *")]
      .filter((e) => !e.closest(".scroll") && !e.closest("#login"))
      .map((e) => ({ e: e.tagName + (e.id ? "#" + e.id : ""), right: e.getBoundingClientRect().right }))
      .sort((a, b) => b.right - a.right)[0],
  }));
  assert.equal(layout.innerWidth, 390);
  assert.ok(layout.scrollWidth <= layout.innerWidth, `horizontal overflow on a phone: ${JSON.stringify(layout)}`);
  assert.ok(layout.widest.right <= layout.innerWidth + 0.5, `an element sticks out: ${JSON.stringify(layout)}`);
  assert.equal(layout.columns, 1, "one column on a phone");
  assert.ok(layout.attentionFirst, "on a phone, what needs attention comes first");
  await p.screenshot({ path: shotPhone, fullPage: true });
  assert.deepEqual(phone.foreign, [], "the page loads nothing from elsewhere");
  assert.deepEqual(phone.errors, [], "no script errors");
  await phone.context.close();
  console.log(`ops dashboard: unassigned ${before} -> ${after}; request ${id} listed with its trail; ` +
    `phone ${layout.scrollWidth}/${layout.innerWidth} px wide; screenshots ${shotDesktop} ${shotPhone}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
