// Interop check against the real Better Auth (npm `better-auth`, `jwt` plugin):
// for each signing algorithm, start Better Auth on loopback over a fresh
// PostgreSQL database, sign a user up, take the JWT Better Auth issues, start
// the real auth-svc binary pointed at that Better Auth, and check WhoAmI and
// VerifyToken over gRPC. Exits non-zero on the first mismatch.
//
//   DATABASE_ADMIN_URL  PostgreSQL to create throwaway databases in
//                       (default postgres://postgres@127.0.0.1:5432/test)
//   AUTH_SVC_BIN        the auth-svc binary (default ../../target/debug/auth-svc)

import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";
import pg from "pg";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const adminUrl = process.env.DATABASE_ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const authSvcBin = process.env.AUTH_SVC_BIN ?? path.join(root, "target/debug/auth-svc");
const ALGORITHMS = ["EdDSA", "ES256", "RS256"];

const definition = protoLoader.loadSync("casebook/auth/v1/auth.proto", {
  includeDirs: [path.join(root, "proto")],
  longs: Number,
  defaults: true,
});
const { AuthService } = grpc.loadPackageDefinition(definition).casebook.auth.v1;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function withDatabase(name, body) {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE "${name}"`);
  const url = adminUrl.replace(/\/[^/]*$/, `/${name}`);
  try {
    return await body(url);
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    await admin.end();
  }
}

async function startBetterAuth(databaseUrl, alg) {
  let handler = null;
  const server = http.createServer((req, res) => handler(req, res));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const baseURL = `http://127.0.0.1:${server.address().port}`;
  const pool = new pg.Pool({ connectionString: databaseUrl });
  // Idle connections are terminated when the test drops its database; that is expected.
  pool.on("error", () => {});
  const auth = betterAuth({
    baseURL,
    secret: "casebook-interop-secret-at-least-32-characters",
    database: pool,
    emailAndPassword: { enabled: true },
    plugins: [jwt({ jwks: { keyPairConfig: { alg } } })],
  });
  const { runMigrations } = await getMigrations(auth.options);
  await runMigrations();
  handler = toNodeHandler(auth);
  const stop = async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await pool.end();
  };
  return { baseURL, stop };
}

async function signUpAndGetToken(baseURL) {
  const email = `interop-${Date.now()}@example.com`;
  const signUp = await fetch(`${baseURL}/api/auth/sign-up/email`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: baseURL },
    body: JSON.stringify({ email, password: "correct-horse-battery", name: "Interop User" }),
  });
  const signUpBody = await signUp.text();
  assert.equal(signUp.status, 200, `sign-up failed: ${signUpBody}`);
  const { user } = JSON.parse(signUpBody);
  const cookie = signUp.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
  const tokenResponse = await fetch(`${baseURL}/api/auth/token`, { headers: { cookie, origin: baseURL } });
  const tokenBody = await tokenResponse.text();
  assert.equal(tokenResponse.status, 200, `token failed: ${tokenBody}`);
  const { token } = JSON.parse(tokenBody);
  return { user, email, token };
}

function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: Date.now() + 5000 }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    ),
  );
}

async function startAuthSvc(baseURL, databaseUrl) {
  const addr = `127.0.0.1:${await freePort()}`;
  const child = spawn(authSvcBin, [], {
    env: { ...process.env, BETTER_AUTH_URL: baseURL, DATABASE_URL: databaseUrl, AUTH_SVC_ADDR: addr },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const client = new AuthService(addr, grpc.credentials.createInsecure());
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      await call(client, "VerifyToken", { token: "probe" });
    } catch (error) {
      // UNAUTHENTICATED means the service is up and answering.
      if (error.code === grpc.status.UNAUTHENTICATED) break;
      if (Date.now() > deadline) throw new Error(`auth-svc did not start: ${error.message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { client, stop: () => child.kill("SIGTERM") };
}

async function checkAlgorithm(alg) {
  await withDatabase(`casebook_interop_${alg.toLowerCase()}_${process.pid}`, async (databaseUrl) => {
    const betterAuthServer = await startBetterAuth(databaseUrl, alg);
    try {
      const { user, email, token } = await signUpAndGetToken(betterAuthServer.baseURL);
      const header = JSON.parse(Buffer.from(token.split(".")[0], "base64url"));
      assert.equal(header.alg, alg, "Better Auth signed with the configured algorithm");
      const authSvc = await startAuthSvc(betterAuthServer.baseURL, databaseUrl);
      try {
        const metadata = new grpc.Metadata();
        metadata.set("authorization", `Bearer ${token}`);
        const me = await call(authSvc.client, "WhoAmI", {}, metadata);
        assert.equal(me.id, user.id);
        assert.equal(me.email, email);
        assert.equal(me.displayName, "Interop User");
        assert.equal(me.name, `users/${user.id}`);

        const { principal } = await call(authSvc.client, "VerifyToken", { token });
        assert.equal(principal.userId, user.id);
        assert.equal(principal.algorithm, alg === "EdDSA" ? "EdDSA" : alg);
        assert.equal(principal.issuer, betterAuthServer.baseURL);
        assert.equal(principal.keyId, header.kid);

        const tampered = token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA");
        await assert.rejects(call(authSvc.client, "VerifyToken", { token: tampered }), (error) => {
          assert.equal(error.code, grpc.status.UNAUTHENTICATED);
          return true;
        });
        console.log(`ok ${alg}: WhoAmI and VerifyToken accept Better Auth's token for ${user.id}`);
      } finally {
        authSvc.stop();
      }
    } finally {
      await betterAuthServer.stop();
    }
  });
}

for (const alg of ALGORITHMS) {
  await checkAlgorithm(alg);
}
console.log(`Better Auth interop: ${ALGORITHMS.length} algorithms ok`);
