// Records a client's events so a test can wait (bounded) for the one it expects.

import { WorkerClient, WorkerClientEvents } from "../../src";

type Name = keyof WorkerClientEvents;
interface Seen {
  name: Name;
  args: unknown[];
}

export class Recorder {
  readonly seen: Seen[] = [];
  private waiters: Array<() => void> = [];

  constructor(readonly client: WorkerClient) {
    const names: Name[] = [
      "authenticated",
      "offer",
      "offerWithdrawn",
      "assignmentConfirmed",
      "jobUpdate",
      "jobReminder",
      "assignmentRevoked",
      "errorFrame",
      "disconnected",
      "reconnecting",
      "stopped",
      "unknownFrame",
    ];
    for (const name of names) {
      client.on(name, (...args: unknown[]) => {
        this.seen.push({ name, args });
        for (const w of this.waiters.splice(0)) w();
      });
    }
  }

  all<N extends Name>(name: N): WorkerClientEvents[N][] {
    return this.seen.filter((s) => s.name === name).map((s) => s.args as WorkerClientEvents[N]);
  }

  /** Resolves with the first event `name` (from index `from`) matching `match`, or fails after `ms`. */
  next<N extends Name>(
    name: N,
    match: (...args: WorkerClientEvents[N]) => boolean = () => true,
    ms = 15000,
    from = 0,
  ): Promise<WorkerClientEvents[N]> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        for (const s of this.seen.slice(from)) {
          if (s.name === name && match(...(s.args as WorkerClientEvents[N]))) {
            clearTimeout(timer);
            resolve(s.args as WorkerClientEvents[N]);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        const got = this.seen.map((s) => s.name).join(", ") || "nothing";
        reject(new Error(`timed out after ${ms} ms waiting for a matching "${name}" event (events so far: ${got})`));
      }, ms);
      const loop = () => {
        if (!check()) this.waiters.push(loop);
      };
      loop();
    });
  }

  /** The number of events recorded so far (a mark for next(..., from)). */
  mark(): number {
    return this.seen.length;
  }
}
