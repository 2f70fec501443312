// Drives the dashboard in a real headless Chromium (playwright-core):
// logs in through the URL the ready summary prints, waits for the demo
// agents, replays a dead letter with its button, follows a task's timeline,
// saves screenshots, and checks that a browser without the token gets the
// login form and a wrong token is refused. Prints one JSON line of what it
// saw; exits non-zero at the first thing that does not hold.
"use strict";
const { chromium } = require("playwright-core");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(name + " is not set");
  return value;
};
const base = env("DASHBOARD_URL");
const token = env("DASHBOARD_TOKEN");
const deadTask = env("DEAD_TASK");
const streamedTask = env("STREAMED_TASK");
const chunks = Number(env("CHUNKS"));
const shots = env("SHOT_DIR");

(async () => {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const seen = {};
  const errors = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("pageerror", (err) => errors.push(err.message));
    const started = Date.now();
    await page.goto(base + "?token=" + encodeURIComponent(token));
    if (new URL(page.url()).search !== "") throw new Error("the token stayed in the URL: " + page.url());
    for (const agent of ["llm_agent", "chat_manager", "enhancement_agent"]) {
      await page.waitForSelector(`#agents tr[data-agent="${agent}"] .dot.on`, { timeout: 15000 });
    }
    seen.agents_online_ms = Date.now() - started;
    await page.waitForFunction(() => Number(document.querySelector('[data-count="completed"] b').textContent) > 0, null, { timeout: 15000 });
    seen.completed = Number(await page.textContent('[data-count="completed"] b'));
    const replay = `#dlq tr[data-dead-letter="${deadTask}"] button.replay`;
    await page.waitForSelector(replay, { timeout: 15000 });
    await page.waitForSelector("#tail li", { timeout: 15000 });
    await page.screenshot({ path: shots + "/dashboard.png", fullPage: true });
    await page.click(replay);
    await page.waitForFunction(() => [...document.querySelectorAll("#dlq button.replay")].some((b) => b.textContent === "Replayed")
      || document.querySelector("#dlq td.empty") !== null, null, { timeout: 15000 });
    await page.waitForSelector(`#dlq tr[data-dead-letter="${deadTask}"]`, { state: "detached", timeout: 15000 });
    seen.replayed = true;

    await page.goto(base + "task/" + encodeURIComponent(streamedTask));
    await page.waitForSelector('#timeline li[data-kind="completed"]', { timeout: 15000 });
    seen.partials = await page.locator('#timeline li[data-kind="partial"]').count();
    if (seen.partials !== chunks) throw new Error("the timeline shows " + seen.partials + " partials, not " + chunks);
    await page.waitForFunction(() => document.getElementById("task-state").textContent === "completed", null, { timeout: 15000 });
    seen.task_state = "completed";
    if (await page.isVisible("#answer-form") || await page.isVisible("#cancel")) {
      throw new Error("a completed task offers cancel or answer");
    }
    await page.screenshot({ path: shots + "/task.png", fullPage: true });

    // A narrow screen: nothing wider than it.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(base);
    await page.waitForSelector('#agents tr[data-agent="llm_agent"]', { timeout: 15000 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error("the page is " + overflow + " px wider than a narrow screen");
    await page.screenshot({ path: shots + "/dashboard-narrow.png", fullPage: true });

    // Another browser, without the token: the login form, which refuses a wrong one.
    const stranger = await (await browser.newContext()).newPage();
    await stranger.goto(base);
    if (!stranger.url().endsWith("/login")) throw new Error("a browser without the token got " + stranger.url());
    await stranger.fill("#token", "not-the-token-" + Date.now());
    await stranger.click("button[type=submit]");
    await stranger.waitForSelector(".refused", { timeout: 10000 });
    const response = await stranger.goto(base + "api/overview");
    if (response.status() !== 401) throw new Error("the API answered " + response.status() + " without the token");
    await stranger.goto(base + "login");
    await stranger.fill("#token", token);
    await stranger.click("button[type=submit]");
    await stranger.waitForSelector('#agents tr[data-agent="llm_agent"]', { timeout: 15000 });
    seen.login_form = true;
    if (errors.length) throw new Error("the page threw: " + errors.join("; "));
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
})().catch((err) => {
  console.error(String(err && err.stack || err));
  process.exit(1);
});
