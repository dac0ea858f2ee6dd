// Screenshot of a Label Studio task showing TSP's score-annotated regions (docs/screenshot-task.png).
//
// How to reproduce (no browser download: Debian's Chromium + playwright-core from npm):
//   apt-get install -y chromium
//   (cd /tmp/shotnode && npm init -y && npm install playwright-core)
//   tsp-sync demo --root /tmp/shotdemo/root --count 40 --size 256 --first-batch 24 --epochs 25 \
//       --port 18080 --backend-port 19090 --serve &      # wait for "keep running"
//   NODE_PATH=/tmp/shotnode/node_modules node scripts/screenshot.js \
//       --url http://127.0.0.1:18080 --login /tmp/shotdemo/root/label-studio/login.json \
//       --out docs/screenshot-task.png [--project ID] [--task ID] [--region N]
//   then stop the demo with Ctrl-C (SIGINT), which stops Label Studio and the backend.
// docs/screenshot-task.png was made this way with --project 1 --task 35 (seed 0; 25 epochs took
// 14 min on a shared 2-core CPU), then re-saved with Pillow's optimize=True.
//
// --shot tab: the Data Manager tab "TSP priority" instead (docs/screenshot-priority-tab.png);
// --shot settings: the project's Settings -> General page (where the sampling is shown).
//
// Without --task it asks the API for the project's predictions and opens the unlabeled task whose
// prediction has the most regions (ties: the highest region score); without --region (1-based, in
// the outliner's order) it clicks the task's highest-scored region, so the Info panel shows its meta
// text "c .. · b .. · m .." beside the outliner's region scores s, and saves a 1440x900 PNG.
"use strict";

const fs = require("fs");
const { chromium } = require("playwright-core");

function args() {
  const out = { url: "http://127.0.0.1:18080", out: "docs/screenshot-task.png", width: 1440, height: 900, shot: "task" };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) out[a[i].replace(/^--/, "")] = a[i + 1];
  if (!out.login) throw new Error("--login: path to the demo's label-studio/login.json is required");
  return out;
}

async function api(page, path) {
  const r = await page.request.get(new URL(path, page.url()).toString());
  if (!r.ok()) throw new Error(`GET ${path}: HTTP ${r.status()}`);
  return r.json();
}

async function pickTask(page, project) {
  const body = await api(page, `/api/tasks/?project=${project}&page_size=1000&fields=all`);
  const tasks = Array.isArray(body) ? body : body.tasks;
  let best = null;
  for (const t of tasks) {
    if ((t.total_annotations || 0) > 0) continue;
    const preds = await api(page, `/api/predictions/?task=${t.id}`);
    for (const p of preds) {
      const regions = (p.result || []).filter((r) => r.type === "brushlabels");
      if (!regions.length) continue;
      const top = Math.max(...regions.map((r) => r.score || 0));
      const key = [regions.length, top];
      if (!best || key[0] > best.key[0] || (key[0] === best.key[0] && key[1] > best.key[1])) {
        best = { task: t.id, key, regions };
      }
    }
  }
  if (!best) throw new Error(`project ${project}: no unlabeled task has a prediction with brush regions`);
  return best.task;
}

// Index (0-based, = the outliner's "By Time" order, which is the prediction's result order) of the
// task's highest-scored brush region.
async function bestRegion(page, task) {
  const preds = await api(page, `/api/predictions/?task=${task}`);
  const regions = preds.length ? (preds[preds.length - 1].result || []).filter((r) => r.type === "brushlabels") : [];
  if (!regions.length) throw new Error(`task ${task}: its prediction has no brush regions; pick another --task`);
  let i = 0;
  regions.forEach((r, j) => { if ((r.score || 0) > (regions[i].score || 0)) i = j; });
  console.log(`task ${task}: ${regions.length} regions; selecting #${i + 1}, s = ${regions[i].score.toFixed(3)}, ` +
              `${(regions[i].meta || {}).text}`);
  return i;
}

(async () => {
  const o = args();
  const login = JSON.parse(fs.readFileSync(o.login, "utf8"));
  const userDir = fs.mkdtempSync("/tmp/shot-chromium-");
  const browser = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
    viewport: { width: +o.width, height: +o.height },
    deviceScaleFactor: 1,
  });
  try {
    const page = browser.pages()[0] || (await browser.newPage());
    await page.goto(`${o.url}/user/login/`);
    await page.fill('input[name="email"]', login.username);
    await page.fill('input[name="password"]', login.password);
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"], input[type="submit"]')]);

    let project = o.project;
    if (!project) {
      const body = await api(page, "/api/projects/?page_size=100");
      const list = Array.isArray(body) ? body : body.results;
      const p = list.find((x) => x.title === "TSP demo: intracranial hemorrhage") || list[0];
      project = p.id;
    }
    if (o.shot === "tab" || o.shot === "settings") {
      let target = `${o.url}/projects/${project}/settings`;
      if (o.shot === "tab") {
        const views = await api(page, `/api/dm/views/?project=${project}`);
        const view = views.find((v) => (v.data || {}).title === "TSP priority");
        if (!view) throw new Error(`project ${project} has no "TSP priority" tab; run tsp-sync reorder`);
        target = `${o.url}/projects/${project}/data?tab=${view.id}`;
      }
      await page.goto(target);
      await page.waitForTimeout(8000);  // the Data Manager loads columns, then tasks and thumbnails
      await page.screenshot({ path: o.out });
      console.log(`wrote ${o.out}`);
      return;
    }
    const task = o.task || (await pickTask(page, project));
    const index = o.region ? +o.region - 1 : await bestRegion(page, task);

    await page.goto(`${o.url}/projects/${project}/data?task=${task}`);
    // The labeling view draws the image and the brush masks on canvases (Konva).
    await page.waitForSelector("canvas", { timeout: 120000 });
    await page.waitForTimeout(5000);
    if (o.debug) await page.screenshot({ path: o.debug });
    // Select the region in the outliner so the Info panel shows its meta text (c, b, m); the
    // outliner lists every region's score s.
    const region = page.locator(".lsf-outliner-item__title").nth(index);
    await region.click();
    await page.waitForTimeout(1500);
    await page.screenshot({ path: o.out });
    console.log(`wrote ${o.out}`);
  } finally {
    await browser.close();
    fs.rmSync(userDir, { recursive: true, force: true });
  }
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
