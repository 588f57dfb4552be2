// One live engine per test file, and clients that are taken offline and closed after each test.

import { after, afterEach, before } from "node:test";

import { WorkerClient, WorkerClientOptions } from "../../src";
import { Engine } from "./engine";
import { Recorder } from "./events";

export const MS_TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

export interface TestWorker {
  id: string;
  token: string;
  client: WorkerClient;
  events: Recorder;
}

export function liveEngine(): { engine: () => Engine; worker: (opts?: Partial<WorkerClientOptions> & { skills?: string[]; id?: string }) => Promise<TestWorker>; cleanupRequest: (id: string) => void } {
  let engine: Engine | null = null;
  const clients: WorkerClient[] = [];
  const requests: string[] = [];

  before(async () => {
    engine = await Engine.start();
  });
  afterEach(async () => {
    // Offline first (a plain close keeps a worker online for the 30 s grace), then close.
    for (const c of clients.splice(0)) {
      if (c.state === "ready") await c.goOffline().catch(() => undefined);
      c.close();
    }
    for (const id of requests.splice(0)) await engine!.cancelRequest(id);
  });
  after(async () => {
    await engine?.stop();
  });

  return {
    engine: () => {
      if (!engine) throw new Error("the engine did not start");
      return engine;
    },
    worker: async (opts = {}) => {
      const e = engine!;
      const { skills, id: given, ...rest } = opts;
      const id = given ?? (await e.createWorker(skills));
      const token = await e.token("worker", id);
      const client = new WorkerClient({
        url: e.wsUrl,
        token,
        backoff: { initialMs: 100, maxMs: 1000, firstMs: 50 },
        rateLimitPauseMs: 200,
        requestTimeoutMs: 10000,
        ...rest,
      });
      clients.push(client);
      return { id, token, client, events: new Recorder(client) };
    },
    cleanupRequest: (id: string) => {
      requests.push(id);
    },
  };
}
