// The browser path, proven in a real browser: headless Chromium loads the
// example page from one origin and calls Casebook through the gateway on
// another (so CORS is exercised), as the demo user of the development stack.
//
//   CASEBOOK_BIN  the stack binary (default ../../target/debug/casebook)
//   CHROMIUM      the browser (default /usr/bin/chromium)

import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { serve } from "../serve.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const casebookBin = process.env.CASEBOOK_BIN ?? path.resolve(here, "../../../target/debug/casebook");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const freePort = () =>
  new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });

/** Starts the stack and resolves with the demo user's token from its banner. */
function startStack(env) {
  const child = spawn(casebookBin, [], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const token = new Promise((resolve, reject) => {
    let output = "";
    child.stdout.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/^export JWT=(\S+)$/m);
      if (match) resolve(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`casebook exited with ${code} before its banner:\n${output}`)));
  });
  return { child, token };
}

const data = await mkdtemp(path.join(os.tmpdir(), "casebook-browser-"));
const page = await serve(0, "127.0.0.1");
const pageOrigin = `http://127.0.0.1:${page.address().port}`;
const [issuer, authSvc, caseSvc, gatewayPort, metrics] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
const stack = startStack({
  CASEBOOK_DATA_DIR: data,
  DEV_ISSUER_ADDR: `127.0.0.1:${issuer}`,
  AUTH_SVC_ADDR: `127.0.0.1:${authSvc}`,
  CASE_SVC_ADDR: `127.0.0.1:${caseSvc}`,
  GATEWAY_ADDR: `127.0.0.1:${gatewayPort}`,
  METRICS_ADDR: `127.0.0.1:${metrics}`,
  CORS_ALLOWED_ORIGINS: pageOrigin,
  RUST_LOG: "warn",
});
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});

try {
  const token = await stack.token;
  assert.notEqual(pageOrigin, `http://127.0.0.1:${gatewayPort}`, "page and gateway are different origins");
  const tab = await browser.newPage();
  tab.on("console", (message) => console.log(`[page] ${message.text()}`));
  await tab.goto(`${pageOrigin}/#token=${token}&gateway=http://127.0.0.1:${gatewayPort}`);
  await tab.locator("#ready").filter({ hasText: "ready" }).waitFor({ state: "attached" });

  // WhoAmI (the services may still be loading keys for a moment: retry briefly).
  for (let attempt = 0; ; attempt++) {
    await tab.click("#whoami");
    try {
      await tab.locator("#me").filter({ hasText: "demo@casebook.local" }).waitFor({ timeout: 1000 });
      break;
    } catch (error) {
      if (attempt === 10) throw new Error(`WhoAmI never succeeded: ${await tab.textContent("#error")}`);
    }
  }
  console.log("ok WhoAmI (Connect):", await tab.textContent("#me"));

  // Plain fetch against the REST routes, cross-origin, as a front end written
  // for the FastAPI design calls it.
  const gateway = `http://127.0.0.1:${gatewayPort}`;
  const [status, me, etag] = await tab.evaluate(async ([gateway, token]) => {
    const authorization = `Bearer ${token}`;
    const me = await fetch(`${gateway}/api/auth/me`, { headers: { authorization } });
    const created = await fetch(`${gateway}/v1/cases`, {
      method: "POST",
      headers: { authorization, "content-type": "application/json", "idempotency-key": "browser-1" },
      body: JSON.stringify({ title: "Filed with fetch", type: "REQUEST" }),
    });
    return [me.status, await me.json(), created.headers.get("etag")];
  }, [gateway, token]);
  assert.equal(status, 200);
  assert.equal(me.email, "demo@casebook.local");
  assert.match(etag, /^"v\d+"$/, "the ETag header is exposed to the page");
  console.log("ok fetch: GET /api/auth/me, POST /v1/cases with ETag", etag);

  // CreateCase, then ListCases shows it.
  await tab.fill("#title", "Filed from Chromium");
  await tab.click("#create");
  const item = tab.locator("#cases li", { hasText: "Filed from Chromium" });
  await item.waitFor();
  assert.equal(await tab.textContent("#count"), "2");
  console.log("ok CreateCase + ListCases");

  // DeleteCase hides it; with "show deleted" it is back, marked; UndeleteCase restores it.
  await item.locator("button", { hasText: "Delete" }).click();
  await tab.locator("#count").filter({ hasText: /^1$/ }).waitFor();
  await tab.check("#show-deleted");
  await tab.click("#list");
  const deleted = tab.locator("#cases li", { hasText: "Filed from Chromium (deleted)" });
  await deleted.waitFor();
  await deleted.locator("button", { hasText: "Undelete" }).click();
  await tab.locator("#cases li", { hasText: /^Filed from Chromium Delete$/ }).waitFor();
  console.log("ok DeleteCase + UndeleteCase");

  // Live updates: a page following WatchCases shows another tab's edit
  // without a reload, over grpc-web and over Server-Sent Events.
  for (const live of ["grpc-web", "sse"]) {
    const watcher = await browser.newPage();
    watcher.on("console", (message) => console.log(`[${live} page] ${message.text()}`));
    await watcher.goto(`${pageOrigin}/#token=${token}&gateway=http://127.0.0.1:${gatewayPort}&live=${live}`);
    await watcher.locator("#live").filter({ hasText: `live (${live})` }).waitFor();
    const title = `Typed in another tab (${live})`;
    await tab.fill("#title", title);
    await tab.click("#create");
    await watcher.locator("#cases li", { hasText: title }).waitFor({ timeout: 10000 });
    console.log(`ok live updates over ${live}: the other tab's case appeared`);
    await watcher.close();
  }

  // A bad token: the page shows the code and the ErrorInfo reason.
  await tab.fill("#token", "not-a-jwt");
  await tab.click("#whoami");
  await tab.locator("#error").filter({ hasText: "unauthenticated (MALFORMED_TOKEN)" }).waitFor();
  console.log("ok bad token:", await tab.textContent("#error"));
  assert.equal(await tab.textContent("#error").then((t) => t.includes("not-a-jwt")), false, "the token is never echoed");
  console.log("browser test passed");
} finally {
  await browser.close();
  stack.child.kill("SIGTERM");
  page.close();
  await rm(data, { recursive: true, force: true });
}
