// A live engine for the tests: a fresh database (created, migrated, seeded), `serve` on a
// free port, and helpers to make workers, tokens and service requests. Stopped (and the
// database dropped) by stop().
//
// Environment: DATABASE_URL (any database on the server; a new one is created next to it),
// JWT_SECRET, NATS_URL (optional, passed through), ARREGLAME_BIN (the engine binary;
// default /work/main/target/debug/arreglame, i.e. <repo>/target/debug/arreglame).

import { spawn, execFile, ChildProcess } from "node:child_process";
import { once } from "node:events";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { promisify } from "node:util";
import { Client } from "pg";

const run = promisify(execFile);

export const SEEDED_CUSTOMER = "00000000-0000-4000-8000-000000000c01";
/** Obelisco, Buenos Aires: inside the seeded city. */
export const BA = { lat: -34.6037, lon: -58.3816 };

const repoRoot = path.resolve(__dirname, "..", "..", "..", "..", "..");

function defaultBinary(): string {
  const fromRepo = path.join(repoRoot, "target", "debug", "arreglame");
  return fs.existsSync(fromRepo) ? fromRepo : "/work/main/target/debug/arreglame";
}

function need(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set (eval "$(scripts/dev-env.sh)")`);
  return v;
}

function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = "/" + db;
  return u.toString();
}

export async function freePort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const candidate = 39100 + 1 + Math.floor(Math.random() * 20000);
    const ok = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once("error", () => resolve(false));
      srv.listen(candidate, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (ok) return candidate;
  }
  throw new Error("no free port above 39100");
}

/** Polls `check` until it returns a value (not undefined), or fails after `ms` with `what`. */
export async function waitFor<T>(what: string, check: () => T | undefined | Promise<T | undefined>, ms = 15000): Promise<T> {
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${lastError ? ` (last error: ${lastError})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Engine {
  private child: ChildProcess | null = null;
  private log: string[] = [];
  readonly bin: string;
  readonly databaseUrl: string;
  readonly adminUrl: string;
  port = 0;

  private constructor(readonly dbName: string) {
    this.bin = process.env.ARREGLAME_BIN || defaultBinary();
    const base = need("DATABASE_URL");
    need("JWT_SECRET");
    this.adminUrl = withDatabase(base, "postgres");
    this.databaseUrl = withDatabase(base, dbName);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws/worker`;
  }

  private env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: this.databaseUrl, LOG_LEVEL: process.env.LOG_LEVEL || "info", ...extra };
    // Our own engine must not take the metrics port or log file of another one.
    delete env.METRICS_ADDR;
    delete env.LOG_FILE;
    return env;
  }

  static async start(): Promise<Engine> {
    const name = `sdk_test_${process.pid}_${Date.now().toString(36)}`;
    const engine = new Engine(name);
    if (!fs.existsSync(engine.bin)) throw new Error(`engine binary ${engine.bin} not found (set ARREGLAME_BIN)`);
    await engine.admin(`create database ${name}`);
    try {
      await run(engine.bin, ["migrate"], { env: engine.env(), timeout: 120000 });
      await run(engine.bin, ["seed"], { env: engine.env(), timeout: 120000 });
      await engine.serve();
    } catch (e) {
      await engine.stop();
      throw e;
    }
    return engine;
  }

  private async serve(): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      this.port = await freePort();
      const child = spawn(this.bin, ["serve"], {
        env: this.env({ PORT: String(this.port), HOST: "127.0.0.1" }),
        stdio: ["ignore", "pipe", "pipe"],
      });
      this.child = child;
      const keep = (b: Buffer) => {
        this.log.push(b.toString());
        if (this.log.length > 400) this.log.splice(0, 200);
      };
      child.stdout!.on("data", keep);
      child.stderr!.on("data", keep);
      let exited = false;
      child.once("exit", () => (exited = true));
      try {
        await waitFor(`the engine on port ${this.port} to be ready`, async () => {
          if (exited) throw new Error(`engine exited: ${this.tail()}`);
          const r = await fetch(`${this.url}/ready`).catch(() => null);
          return r && r.ok ? true : undefined;
        }, 60000);
        return;
      } catch (e) {
        child.kill("SIGKILL");
        if (attempt === 2 || !exited) throw e; // retry only a start that died (port taken)
      }
    }
  }

  tail(lines = 40): string {
    return this.log.join("").split("\n").slice(-lines).join("\n");
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10000);
      await once(child, "exit").catch(() => undefined);
      clearTimeout(timer);
    }
    await this.admin(`drop database if exists ${this.dbName} with (force)`).catch(() => undefined);
  }

  private async admin(sql: string): Promise<void> {
    const c = new Client({ connectionString: this.adminUrl });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  }

  async sql<T extends Record<string, unknown> = Record<string, unknown>>(text: string, params: unknown[] = []): Promise<T[]> {
    const c = new Client({ connectionString: this.databaseUrl });
    await c.connect();
    try {
      return (await c.query(text, params)).rows as T[];
    } finally {
      await c.end();
    }
  }

  /** A new active worker profile in Buenos Aires; returns its id. */
  async createWorker(skills: string[] = ["lawn_mowing"], name = "SDK Worker"): Promise<string> {
    const rows = await this.sql<{ id: string }>(
      `insert into worker_profiles (name, "cityId", skills) values ($1, 'buenos-aires', $2) returning id`,
      [name, skills],
    );
    return rows[0].id;
  }

  async deactivateWorker(id: string): Promise<void> {
    await this.sql(`update worker_profiles set "isActive" = false where id = $1`, [id]);
  }

  async token(role: "worker" | "customer" | "ops", sub: string, ttl = "1h"): Promise<string> {
    const { stdout } = await run(this.bin, ["token", "--role", role, "--sub", sub, "--ttl", ttl], { env: this.env() });
    return stdout.trim();
  }

  async graphql<T = any>(token: string, query: string, variables: Record<string, unknown>): Promise<T> {
    const r = await fetch(`${this.url}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables }),
    });
    const body = (await r.json()) as { data?: T; errors?: unknown };
    if (!r.ok || body.errors) throw new Error(`GraphQL ${r.status}: ${JSON.stringify(body.errors ?? body)}`);
    return body.data as T;
  }

  /** Creates a service request as the seeded customer; returns its id. */
  async createRequest(input: Partial<Record<string, unknown>> = {}): Promise<string> {
    const token = await this.token("customer", SEEDED_CUSTOMER);
    const data = await this.graphql<{ createServiceRequest: { id: string; status: string } }>(
      token,
      "mutation($input: CreateServiceRequestInput!) { createServiceRequest(input: $input) { id status } }",
      {
        input: {
          latitude: BA.lat,
          longitude: BA.lon,
          address: "Av. Corrientes 1234",
          description: "Corte de pasto",
          squareMeters: 100,
          ...input,
        },
      },
    );
    return data.createServiceRequest.id;
  }

  /** Cancels a request (free while no worker is committed); errors are ignored (cleanup). */
  async cancelRequest(id: string): Promise<void> {
    const token = await this.token("customer", SEEDED_CUSTOMER);
    await this.graphql(token, "mutation($id: ID!) { cancelServiceRequest(id: $id, reason: \"test cleanup\") { id status } }", { id }).catch(
      () => undefined,
    );
  }
}
