// Tiny request/response protocol over child_process IPC, shared by the orchestrator (run.ts), the server child
// (server-main.ts) and the load child (load.ts). Every call carries an id and a deadline, so nothing waits forever.

import type { ChildProcess } from 'node:child_process';

export interface IpcRequest {
    readonly kind: 'req';
    readonly id: number;
    readonly cmd: string;
    readonly args: Record<string, unknown>;
}

export interface IpcResponse {
    readonly kind: 'res';
    readonly id: number;
    readonly ok: boolean;
    readonly result?: unknown;
    readonly error?: string;
}

export interface IpcEvent {
    readonly kind: 'event';
    readonly event: string;
    readonly data?: unknown;
}

export type IpcMessage = IpcRequest | IpcResponse | IpcEvent;

export type Handler = (args: Record<string, unknown>) => unknown;

// Child side: serve commands from the parent. The child exits when the parent goes away.

export function serve(handlers: Record<string, Handler>): void {

    if (!process.send) {
        throw new Error('This file is a benchmark child process; run it through dist/bench/run.js');
    }

    process.on('disconnect', () => process.exit(0));
    process.on('message', async (raw: unknown) => {

        const msg = raw as IpcMessage;
        if (!msg || msg.kind !== 'req') {
            return;
        }

        const handler = handlers[msg.cmd];
        let response: IpcResponse;
        try {
            if (!handler) {
                throw new Error(`Unknown command ${msg.cmd}`);
            }

            const result = await handler(msg.args);
            response = { kind: 'res', id: msg.id, ok: true, result };
        }
        catch (err) {
            response = { kind: 'res', id: msg.id, ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) };
        }

        if (process.connected) {
            process.send!(response);
        }
    });

    emit('ready');
}

export function emit(event: string, data?: unknown): void {

    if (process.send && process.connected) {
        process.send({ kind: 'event', event, data } satisfies IpcEvent);
    }
}

// Parent side: a handle on one child.

export class Peer {

    private nextId = 1;
    private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
    private readonly waiters = new Map<string, Array<(data: unknown) => void>>();
    private exited = false;

    constructor(readonly name: string, readonly child: ChildProcess) {

        child.on('message', (raw: unknown) => {

            const msg = raw as IpcMessage;
            if (msg.kind === 'res') {
                const entry = this.pending.get(msg.id);
                if (!entry) {
                    return;
                }

                this.pending.delete(msg.id);
                clearTimeout(entry.timer);
                if (msg.ok) {
                    entry.resolve(msg.result);
                }
                else {
                    entry.reject(new Error(`${this.name}: ${msg.error}`));
                }

                return;
            }

            if (msg.kind === 'event') {
                const list = this.waiters.get(msg.event) ?? [];
                this.waiters.delete(msg.event);
                for (const fn of list) {
                    fn(msg.data);
                }
            }
        });

        child.on('exit', (code, signal) => {

            this.exited = true;
            for (const [, entry] of this.pending) {
                clearTimeout(entry.timer);
                entry.reject(new Error(`${this.name} exited (code ${code}, signal ${signal})`));
            }

            this.pending.clear();
        });
    }

    get alive(): boolean {

        return !this.exited;
    }

    waitEvent(event: string, timeoutMs: number): Promise<unknown> {

        return new Promise((resolve, reject) => {

            const timer = setTimeout(() => reject(new Error(`${this.name}: no '${event}' within ${timeoutMs} ms`)), timeoutMs);
            const list = this.waiters.get(event) ?? [];
            list.push((data) => {

                clearTimeout(timer);
                resolve(data);
            });
            this.waiters.set(event, list);
            this.child.once('exit', () => {

                clearTimeout(timer);
                reject(new Error(`${this.name} exited before '${event}'`));
            });
        });
    }

    call<T>(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<T> {

        if (this.exited) {
            return Promise.reject(new Error(`${this.name} is not running`));
        }

        const id = this.nextId++;
        return new Promise<T>((resolve, reject) => {

            const timer = setTimeout(() => {

                this.pending.delete(id);
                reject(new Error(`${this.name}: '${cmd}' timed out after ${timeoutMs} ms`));
            }, timeoutMs);

            this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
            this.child.send({ kind: 'req', id, cmd, args } satisfies IpcRequest);
        });
    }

    // Ask politely, then kill. Always resolves.

    async stop(graceMs = 2_000): Promise<void> {

        if (this.exited) {
            return;
        }

        const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
        try {
            await this.call('stop', {}, graceMs);
        }
        catch { }

        const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
        if (this.child.connected) {
            this.child.disconnect();
        }

        await exited;
        clearTimeout(timer);
    }
}

// Monotonic clock shared by all processes on the machine (CLOCK_MONOTONIC), in milliseconds.

export function nowMs(): number {

    return Number(process.hrtime.bigint()) / 1e6;
}
