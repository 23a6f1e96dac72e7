// Shared test fixtures: servers with our plugin or with @hapi/nes, and a raw WebSocket peer that
// records every frame so tests can assert on the exact wire format.

import * as AsyncHooks from 'node:async_hooks';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import * as Net from 'node:net';
import * as Path from 'node:path';

import * as Basic from '@hapi/basic';
import * as Boom from '@hapi/boom';
import * as Hapi from '@hapi/hapi';
import { createClient } from '@redis/client';
import WebSocket from 'ws';

import * as Pulse from '../lib/index';

// The stock nes client, loosely typed: tests poke at it the way applications do.
export interface NesClient {
    id: string | null;
    connect(options?: any): Promise<void>;
    disconnect(): Promise<void>;
    request(options: any): Promise<any>;
    message(message: any): Promise<any>;
    subscribe(path: string, handler: (message: any, flags: any) => void): Promise<void>;
    unsubscribe(path: string, handler?: any): Promise<void>;
    subscriptions(): string[];
    reauthenticate(auth: any): Promise<any>;
    [key: string]: any;
}

export const Nes: { Client: new (address: string, options?: any) => NesClient; plugin: any } = require('@hapi/nes');

export type Flavour = 'pulse' | 'nes';

export const server = async (options: Record<string, unknown> = {}, flavour: Flavour = 'pulse', setup?: (server: Hapi.Server) => void | Promise<void>): Promise<Hapi.Server> => {

    const srv = Hapi.server({ host: '127.0.0.1', port: 0 });
    if (setup) {
        await setup(srv);
    }

    await srv.register({ plugin: flavour === 'pulse' ? Pulse.plugin : Nes, options } as any);
    return srv;
};

export const url = (srv: Hapi.Server): string => `ws://127.0.0.1:${srv.info.port}`;

export const wait = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// Polls until `check` is true, failing the test after `timeout` ms.
export const until = async (check: () => boolean, timeout = 3000, what = 'condition'): Promise<void> => {

    const end = Date.now() + timeout;
    while (!check()) {
        if (Date.now() > end) {
            throw new Error(`Timed out waiting for ${what}`);
        }

        await wait(5);
    }
};

// Timers that lib/ code starts from now on, and how many of them are still pending. Counting every timer in
// the process would mix in those of other tests and libraries, which come and go on their own schedule.
const libraryDir = Path.resolve(__dirname, '../lib') + Path.sep;

const startedByLibrary = (): boolean => {

    // Raw call sites: cheap, and the compiled paths (no source maps involved)
    const prepare = Error.prepareStackTrace;
    const limit = Error.stackTraceLimit;
    Error.prepareStackTrace = (_error, sites) => sites;
    Error.stackTraceLimit = 20;
    const sites = new Error().stack as unknown as NodeJS.CallSite[];
    Error.prepareStackTrace = prepare;
    Error.stackTraceLimit = limit;

    // Past this function and the hook, the first frame outside node's internals called setTimeout / setInterval.
    const caller = sites.slice(2).find((site) => !(site.getFileName() ?? 'node:').startsWith('node:'));
    return caller?.getFileName()?.startsWith(libraryDir) ?? false;
};

export const libraryTimers = (): { pending: () => number; stop: () => void } => {

    const pending = new Set<number>();
    const hook = AsyncHooks.createHook({
        init(id, type) {

            if (type === 'Timeout' && startedByLibrary()) {
                pending.add(id);
            }
        },
        destroy(id) {                                       // a timer that fired or was cleared

            pending.delete(id);
        }
    });

    hook.enable();
    return { pending: () => pending.size, stop: () => hook.disable() };
};

// A raw protocol peer: sends exactly what it is told, keeps every frame it receives.
export class Peer {

    readonly frames: string[] = [];
    closed: { code: number; reason: string } | null = null;
    private waiting: { count: number; resolve: () => void }[] = [];

    private constructor(readonly ws: WebSocket) {

        ws.on('message', (data) => {

            this.frames.push(data.toString());
            this.waiting = this.waiting.filter((waiter) => {

                if (this.frames.length >= waiter.count) {
                    waiter.resolve();
                    return false;
                }

                return true;
            });
        });

        ws.on('close', (code, reason) => {

            this.closed = { code, reason: reason.toString() };
        });

        ws.on('error', () => { });
    }

    static open(address: string, options: WebSocket.ClientOptions = {}): Promise<Peer> {

        return new Promise((resolve, reject) => {

            const ws = new WebSocket(address, options);
            const peer = new Peer(ws);
            ws.once('open', () => resolve(peer));
            ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`Upgrade refused: ${res.statusCode}`), { statusCode: res.statusCode })));
            ws.once('error', reject);
        });
    }

    send(message: unknown): void {

        this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
    }

    // Resolves with the next frame (parsed), waiting at most `timeout` ms.
    async next(timeout = 2000): Promise<any> {

        const index = this.read;
        await this.count(index + 1, timeout);
        this.read = index + 1;
        return JSON.parse(this.frames[index]!);
    }

    read = 0;

    count(count: number, timeout = 2000): Promise<void> {

        if (this.frames.length >= count) {
            return Promise.resolve();
        }

        return new Promise((resolve, reject) => {

            const timer = setTimeout(() => reject(new Error(`Timed out waiting for frame ${count} (have ${this.frames.length})`)), timeout);
            this.waiting.push({ count, resolve: () => {

                clearTimeout(timer);
                resolve();
            } });
        });
    }

    async request(message: Record<string, unknown>, timeout = 2000): Promise<any> {

        this.send(message);
        return await this.next(timeout);
    }

    // Sends a request and waits for the frame answering its id, whatever arrives in between.
    async reply(message: Record<string, unknown>, timeout = 2000): Promise<any> {

        const from = this.frames.length;
        this.send(message);
        let found: any;
        await until(() => {

            for (let i = from; i < this.frames.length; ++i) {
                const frame = JSON.parse(this.frames[i]!);
                if (frame.id === message.id && frame.type === message.type) {
                    found = frame;
                    return true;
                }
            }

            return false;
        }, timeout, `reply to ${message.type} ${message.id}`);
        return found;
    }

    async hello(extra: Record<string, unknown> = {}): Promise<any> {

        return await this.request({ type: 'hello', id: 1, version: '2', ...extra });
    }

    closedWith(timeout = 2000): Promise<{ code: number; reason: string }> {

        return until(() => this.closed !== null, timeout, 'close').then(() => this.closed!);
    }

    close(): void {

        this.ws.close();
    }

    // From now on, the opcode of every frame the server writes, read from the TCP stream under ws:
    // shows what went on the wire, including anything after a close frame that ws would hide.
    opcodes(): number[] {

        const opcodes: number[] = [];
        let pending = Buffer.alloc(0);
        (this.ws as unknown as { _socket: NodeJS.ReadableStream })._socket.on('data', (chunk: Buffer) => {

            pending = Buffer.concat([pending, chunk]);
            while (pending.length >= 2) {
                const short = pending[1]! & 0x7f;
                const header = short === 126 ? 4 : short === 127 ? 10 : 2;
                const length = short === 126 ? pending.readUInt16BE(2) : short === 127 ? Number(pending.readBigUInt64BE(2)) : short;
                if (pending.length < header + length) {
                    break;
                }

                opcodes.push(pending[0]! & 0x0f);
                pending = pending.subarray(header + length);
            }
        });

        return opcodes;
    }
}

// ---- Redis: the real server at REDIS_URL; missing it skips loudly, or fails under CI=true ----

// The probe is shared with .labrc.js, which reads it before the TypeScript is built (dist/test -> test/redis.js).
const probe: { url: string; available: boolean } = require('../../test/redis.js');

export const redisUrl = probe.url;
export const redisAvailable = probe.available;

// Whether a suite that needs Redis should skip (it never does under CI=true, where it then fails).
export const skipWithoutRedis = (what: string): boolean => {

    if (redisAvailable || process.env.CI === 'true') {
        return false;
    }

    console.error(`\n${'#'.repeat(100)}\n#  SKIPPED: ${what}. No Redis at ${redisUrl} (set REDIS_URL). Under CI=true this fails.\n${'#'.repeat(100)}\n`);
    return true;
};

export const freePort = (): Promise<number> => {

    return new Promise((resolve, reject) => {

        const probe = Net.createServer();
        probe.once('error', reject);
        probe.listen(0, '127.0.0.1', () => {

            const port = (probe.address() as Net.AddressInfo).port;
            probe.close(() => resolve(port));
        });
    });
};

export const redisServerAvailable = spawnSync('redis-server', ['--version']).status === 0;

// A redis-server of the test's own, for faults that would disturb everyone on the shared one. Killed
// on exit too, in case a test timed out before its finally.
const privateServers = new Set<ChildProcess>();
process.once('exit', () => privateServers.forEach((child) => child.kill('SIGKILL')));

export class PrivateRedis {

    child: ChildProcess | null = null;

    private constructor(readonly port: number) { }

    get url(): string {

        return `redis://127.0.0.1:${this.port}`;
    }

    static async start(): Promise<PrivateRedis> {

        const redis = new PrivateRedis(await freePort());
        await redis.restart();
        return redis;
    }

    async restart(): Promise<void> {

        const child = spawn('redis-server', ['--port', `${this.port}`, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
        this.child = child;
        privateServers.add(child);
        child.once('exit', () => privateServers.delete(child));
        const probe = createClient({ url: this.url, socket: { reconnectStrategy: 20 } });
        probe.on('error', () => { });
        await probe.connect();
        probe.destroy();
    }

    async kill(): Promise<void> {

        const child = this.child;
        if (child && child.exitCode === null) {
            const exited = new Promise((resolve) => child.once('exit', resolve));
            child.kill('SIGKILL');
            await exited;
        }

        this.child = null;
    }

    signal(signal: NodeJS.Signals): void {

        this.child!.kill(signal);
    }
}

// A TCP proxy the test can cut: cut() drops every connection through it and refuses new ones until restore().
// The target is a port, or a function picking one for each new connection (a load balancer).
export class Proxy {

    private readonly links = new Set<Net.Socket>();
    private readonly replies = new Map<Net.Socket, Net.Socket>();          // target side -> client side
    private readonly stalled = new Set<Net.Socket>();
    private cutOff = false;

    private constructor(private readonly server: Net.Server, readonly port: number) { }

    static async start(target: number | (() => number)): Promise<Proxy> {

        const server = Net.createServer();
        const proxy: Proxy = await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(new Proxy(server, (server.address() as Net.AddressInfo).port))));
        server.on('connection', (inbound) => proxy.link(inbound, target));
        return proxy;
    }

    get url(): string {

        return `redis://127.0.0.1:${this.port}`;
    }

    get isCut(): boolean {

        return this.cutOff;
    }

    cut(): void {

        this.cutOff = true;
        for (const socket of this.links) {
            socket.destroy();
        }
    }

    restore(): void {

        this.cutOff = false;
    }

    // Stops reading what the targets send on the current connections, as a client that stopped reading would,
    // until flow().
    stall(): void {

        for (const [outbound, inbound] of this.replies) {
            outbound.unpipe(inbound);
            outbound.pause();
            this.stalled.add(outbound);
        }
    }

    flow(): void {

        for (const outbound of this.stalled) {
            const inbound = this.replies.get(outbound);
            if (inbound) {
                outbound.pipe(inbound);
            }
        }

        this.stalled.clear();
    }

    close(): Promise<void> {

        this.cut();
        return new Promise((resolve) => this.server.close(() => resolve()));
    }

    private link(inbound: Net.Socket, target: number | (() => number)): void {

        if (this.cutOff) {
            inbound.destroy();
            return;
        }

        const outbound = Net.connect(typeof target === 'number' ? target : target(), '127.0.0.1');
        this.replies.set(outbound, inbound);
        outbound.on('close', () => this.replies.delete(outbound));
        for (const [from, to] of [[inbound, outbound], [outbound, inbound]] as const) {
            this.links.add(from);
            from.pipe(to);
            from.on('error', () => to.destroy());
            from.on('close', () => {

                this.links.delete(from);
                to.destroy();
            });
        }
    }
}

// ---- Teardown: register cleanups as a test goes, run them (last first) after each test ----

export const teardown = (lab: { afterEach(fn: () => Promise<void>): void }): ((fn: () => unknown) => void) => {

    const pending: (() => unknown)[] = [];
    lab.afterEach(async () => {

        while (pending.length) {
            await pending.pop()!();
        }
    });

    return (fn) => {

        pending.push(fn);
    };
};

// ---- Credentials that carry their own expiry: the basic password `ttl` makes them expire ttl ms from now ----

export const expiringBasic = async (srv: Hapi.Server): Promise<void> => {

    await srv.register(Basic);
    srv.auth.strategy('default', 'basic', {
        validate: (_request: unknown, username: string, ttl: string) => {

            if (username === 'bad') {
                return { isValid: false, credentials: null };
            }

            return { isValid: true, credentials: { user: username, expiresAt: ttl === 'none' ? undefined : Date.now() + Number(ttl) } };
        }
    });
    srv.auth.default('default');
};

export const expiringHeader = (username: string, ttl: number | 'none'): { headers: { authorization: string } } => ({ headers: { authorization: 'Basic ' + Buffer.from(`${username}:${ttl}`).toString('base64') } });

// Credentials are the JSON in the authorization header (tests that need users without passwords).
export const jsonAuth = (srv: Hapi.Server): void => {

    srv.auth.scheme('json', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const header = request.headers.authorization;
            if (!header) {
                throw Boom.unauthorized(null, 'Json');
            }

            return h.authenticated({ credentials: JSON.parse(header as string) });
        }
    }) as any);
    srv.auth.strategy('json', 'json');
};

// Deletes every key under a test's own prefix (never anything else), through `admin` or a client of its own.
interface KeysClient {
    scanIterator(options: { MATCH: string; COUNT: number }): AsyncIterable<string[]>;
    del(keys: string[]): Promise<unknown>;
}

export const deleteRedisKeys = async (prefix: string, admin?: KeysClient): Promise<void> => {

    const own = admin ? null : createClient({ url: redisUrl });
    const client: KeysClient = admin ?? own!;
    await own?.connect();
    try {
        for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
            if (keys.length) {
                await client.del(keys);
            }
        }
    }
    finally {
        own?.destroy();
    }
};
