// The seeded fault run: several node processes (test/fault-node.ts) over a private redis-server, each node's
// Redis link behind a proxy the run can cut, clients of both kinds (hapi-pulse with recovery, stock @hapi/nes)
// behind a balancer each that sends every new connection to a random live node, publishes carrying sequence
// numbers, and one fault at a time: a node's Redis link cut, Redis paused (SIGSTOP/SIGCONT, sometimes past the
// broker's timeout), Redis killed and restarted (history lost), a node killed, a node stopped under load
// (server.stop()), a slow consumer cut off. Then a check per client and path: nothing twice, nothing out of
// order, every acknowledged publish delivered unless excused (see `owed` below).
//
// A seed fixes every choice of the run (faults, their targets and lengths, moves, message decorations);
// timing still varies from run to run, so a failing seed reproduces the schedule, not the exact interleaving.
//
//   npm run chaos [-- <runs> [<first seed>]]          FAULT_SEED=<n> picks the seed of the npm test run

import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as Path from 'node:path';

import { Client } from '../lib/client';
import type { Command, FaultMessage, NodeConfig, Report, Request } from './fault-node';
import { Nes, PrivateRedis, Proxy, freePort } from './helpers';
import type { NesClient } from './helpers';

export interface Scale {
    nodes: number;
    pulseClients: number;
    nesClients: number;
    duration: number;                    // ms of faults and moves
    moveEvery: number;                   // ms between two client moves
}

export const small: Scale = { nodes: 3, pulseClients: 8, nesClients: 4, duration: 12000, moveEvery: 250 };
export const large: Scale = { nodes: 3, pulseClients: 30, nesClients: 12, duration: 40000, moveEvery: 80 };

const paths = ['/h/1', '/h/2', '/small/1', '/p/1'];
const historyPaths = new Set(['/h/1', '/h/2', '/small/1']);
const users = ['u0', 'u1', 'u2'];
const timeout = 1000;                    // the brokers' timeout: some Redis pauses outlast it
const grace = 2500;                      // ms a connection must outlive a publish for a non-recovering client to owe it

// mulberry32: a small, fast, seedable generator (the run must be reproducible, Math.random is not).
const generator = (seed: number): (() => number) => {

    let state = seed >>> 0;
    return () => {

        state = (state + 0x6D2B79F5) >>> 0;
        let t = state;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
};

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---- Nodes ----

class FaultNode {

    child: ChildProcess | null = null;
    private nextId = 0;
    private readonly pending = new Map<number, (error: string | null) => void>();

    constructor(readonly index: number, readonly port: number, readonly link: Proxy, private readonly config: Omit<NodeConfig, 'port' | 'redis'>, private readonly onLog: (node: number, tags: string[], path?: string) => void) { }

    get alive(): boolean {

        return this.child !== null;
    }

    async start(): Promise<void> {

        const config: NodeConfig = { ...this.config, port: this.port, redis: this.link.url };
        const child = fork(Path.join(__dirname, 'fault-node.js'), [JSON.stringify(config)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
        child.on('error', () => { });                                       // a send racing its exit: settled above
        const ready = new Promise<void>((resolve, reject) => {

            child.once('exit', () => reject(new Error(`node ${this.index} exited while starting`)));
            child.on('message', (report: Report) => {

                if (report.type === 'ready') {
                    resolve();
                }
                else if (report.type === 'done') {
                    this.settle(report.id, report.error ?? null);
                }
                else {
                    this.onLog(this.index, report.tags, report.path);
                }
            });
        });

        child.once('exit', () => {

            if (this.child === child) {
                this.child = null;
            }

            for (const settle of this.pending.values()) {
                settle('node exited');
            }

            this.pending.clear();
        });

        await ready;
        this.child = child;
    }

    private settle(id: number, error: string | null): void {

        const settle = this.pending.get(id);
        this.pending.delete(id);
        settle?.(error);
    }

    // Resolves with null once the node did it, or with the error (a node gone counts as an error).
    request(command: Request): Promise<string | null> {

        const child = this.child;
        if (!child) {
            return Promise.resolve('node down');
        }

        const id = ++this.nextId;
        return new Promise((resolve) => {

            this.pending.set(id, resolve);
            child.send({ ...command, id } as Command, (err) => err && this.settle(id, 'node exited'));     // exiting meanwhile
        });
    }

    async kill(): Promise<void> {

        const child = this.child;
        if (child) {
            this.child = null;
            const exited = new Promise((resolve) => child.once('exit', resolve));
            child.kill('SIGKILL');
            await exited;
        }
    }

    // server.stop() while publishes flow; the process exits once it returned.
    async stop(): Promise<void> {

        const child = this.child;
        if (child) {
            const exited = new Promise((resolve) => child.once('exit', resolve));
            await this.request({ op: 'stop' });
            this.child = null;
            await exited;
        }
    }
}

// ---- Clients ----

interface Connection {
    start: number;
    end: number | null;
}

interface Tracked {
    name: string;
    kind: 'pulse' | 'nes';
    user: string;
    balancer: Proxy;
    got: Map<string, number[]>;
    resets: Map<string, Reset[]>;                 // when the client was told recovered: false
    updates: number[];
    connections: Connection[];
    wrong: string[];                              // filter, override or targeting mistakes
    close: () => Promise<void>;
}

interface Reset {
    at: number;
    after: number;                                // the last seq the client had received on the path then
}

interface Published {
    path: string;
    seq: number;
    start: number;
    ack: number;
    ok: boolean;
    user?: string;
    hide?: string;
    over?: string;
}

interface Fault {
    kind: string;
    start: number;
    end: number;
}

export interface Result {
    seed: number;
    summary: string;
    losses: string[];
    duplicates: string[];
    reorders: string[];
    wrong: string[];
}

export const runFaults = async (seed: number, scale: Scale = small): Promise<Result> => {

    // One generator per concern, so that how many publishes timing allowed does not shift the fault schedule
    const streams = (index: number) => {

        const random = generator(seed + index * 0x9E3779B9);
        return {
            random,
            pick: <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!,
            between: (min: number, max: number): number => min + Math.floor(random() * (max - min))
        };
    };

    const { pick, between } = streams(0);                       // faults
    const moving = streams(1);
    const balancing = streams(2);

    const origin = Date.now();
    const redis = await PrivateRedis.start();
    const nodes: FaultNode[] = [];
    const tracked: Tracked[] = [];
    const published: Published[] = [];
    const broadcasts: Published[] = [];
    const faults: Fault[] = [];
    const gaps: { node: number; path?: string; at: number }[] = [];
    let slowCutOffs = 0;
    const counts: Record<string, number> = {};

    try {
        // Nodes: each with its own cuttable link to Redis, restarted on the same port
        const config = { prefix: `faults:${randomBytes(4).toString('hex')}:`, timeout, history: { size: 1000, ttl: 60000 }, small: { size: 5, ttl: 1500 }, maxBufferedBytes: 64 * 1024 };
        for (let i = 0; i < scale.nodes; ++i) {
            const link = await Proxy.start(redis.port);
            const node = new FaultNode(i, await freePort(), link, config, (index, tags, path) => {

                if (tags.includes('gap')) {
                    gaps.push({ node: index, path, at: Date.now() });
                }
                else {
                    ++slowCutOffs;
                }
            });

            await node.start();
            nodes.push(node);
        }

        const liveNode = (choose: <T>(list: readonly T[]) => T): FaultNode | null => {

            const live = nodes.filter((node) => node.alive);
            return live.length ? choose(live) : null;
        };

        // Clients: each behind its own balancer; a move cuts its connection and it reconnects to a random live node
        for (let i = 0; i < scale.pulseClients + scale.nesClients; ++i) {
            const kind = i < scale.pulseClients ? 'pulse' : 'nes';
            const balancer = await Proxy.start(() => (liveNode(balancing.pick) ?? nodes[0]!).port);
            const user = users[i % users.length]!;
            const state: Tracked = { name: `${kind}${i}`, kind, user, balancer, got: new Map(), resets: new Map(), updates: [], connections: [], wrong: [], close: () => Promise.resolve() };
            const address = `ws://127.0.0.1:${balancer.port}`;
            const onMessage = (path: string) => (message: FaultMessage | undefined, flags?: { recovered?: boolean }) => {

                if (flags?.recovered === false) {
                    state.resets.get(path)!.push({ at: Date.now(), after: state.got.get(path)!.at(-1) ?? 0 });
                    return;
                }

                const pub = message!;
                if (pub.hide === user || (pub.over === user) !== !!pub.overridden) {
                    state.wrong.push(`${state.name} ${path} #${pub.seq}: filter`);
                }

                state.got.get(path)!.push(pub.seq);
            };

            const connected = () => state.connections.push({ start: Date.now(), end: null });
            const disconnected = () => {

                const last = state.connections.at(-1);
                if (last && last.end === null) {
                    last.end = Date.now();
                }
            };

            for (const path of paths) {
                state.got.set(path, []);
                state.resets.set(path, []);
            }

            const auth = { headers: { 'x-user': user } };
            // Both clients have the same nes-shaped API: only the constructor differs.
            const client: NesClient = kind === 'pulse' ? new Client(address, { recovery: true }) : new Nes.Client(address);
            client.onError = () => { };
            client.onConnect = connected;
            client.onDisconnect = disconnected;
            client.onUpdate = (message: any) => state.updates.push(message.seq);
            for (const path of paths) {
                await client.subscribe(path, onMessage(path));
            }

            await client.connect({ auth, delay: 50, maxDelay: 500 });
            state.close = () => client.disconnect();

            tracked.push(state);
        }

        // Publishers: one sequential loop per path (so that acknowledged publishes are ordered), and one for broadcasts
        let publishing = true;
        let burst = 0;                                   // big publishes still to send at once on /h/2 (slow consumer)
        const publisher = async (path: string | null, index: number): Promise<void> => {

            const { random, pick: choose, between: wait } = streams(10 + index);
            for (let seq = 1; publishing; ++seq) {
                const bursting = path === '/h/2' && burst > 0 && burst-- > 0;
                const pad = path === '/h/2' ? 'x'.repeat(bursting ? 64 * 1024 : 2000) : undefined;
                const node = liveNode(choose);
                if (!node) {
                    await sleep(20);
                    continue;
                }

                const message: FaultMessage = { seq };
                const record: Published = { path: path ?? 'broadcast', seq, start: Date.now(), ack: 0, ok: false };
                if (path) {
                    const roll = random();
                    if (roll < 0.1) {
                        record.user = choose(users);
                    }
                    else if (roll < 0.2) {
                        message.hide = record.hide = choose(users);
                    }
                    else if (roll < 0.3) {
                        message.over = record.over = choose(users);
                    }

                    if (pad) {
                        message.pad = pad;
                    }
                }

                const error = await node.request(path ? { op: 'publish', path, message, ...(record.user ? { user: record.user } : {}) } : { op: 'broadcast', message });
                record.ack = Date.now();
                record.ok = error === null;
                (path ? published : broadcasts).push(record);
                await sleep(bursting ? 0 : path ? wait(15, 35) : 200);
            }
        };

        const publishers = [...paths.map((path, index) => publisher(path, index)), publisher(null, paths.length)];

        // Faults, one at a time, and moves meanwhile
        const started = Date.now();
        const running = () => Date.now() - started < scale.duration;
        const moves = (async () => {

            while (running()) {
                const client = moving.pick(tracked);
                client.balancer.cut();
                client.balancer.restore();
                counts.move = (counts.move ?? 0) + 1;
                await sleep(moving.between(scale.moveEvery / 2, scale.moveEvery * 1.5));
            }
        })();

        const kinds = ['link', 'pause', 'redis-restart', 'node-kill', 'node-stop', 'slow'] as const;
        while (running()) {
            await sleep(between(300, 2500));
            const kind = pick(kinds);
            counts[kind] = (counts[kind] ?? 0) + 1;
            const fault: Fault = { kind, start: Date.now(), end: 0 };
            faults.push(fault);
            if (kind === 'link') {
                const node = pick(nodes);
                node.link.cut();
                await sleep(between(1000, 3000));
                node.link.restore();
            }
            else if (kind === 'pause') {
                redis.signal('SIGSTOP');
                await sleep(between(300, 2000));
                redis.signal('SIGCONT');
            }
            else if (kind === 'redis-restart') {
                await redis.kill();
                await sleep(between(200, 1000));
                await redis.restart();
            }
            else if (kind === 'node-kill' || kind === 'node-stop') {
                const node = pick(nodes);
                await (kind === 'node-kill' ? node.kill() : node.stop());
                await sleep(between(200, 1000));
                await node.start();
            }
            else {
                // A client stops reading while big messages flow: cut off (high-water mark 4003, or the heartbeat on
                // either side), it comes back and recovers
                const client = pick(tracked);
                client.balancer.stall();
                burst = 100;                                                        // 6.4 MB: past what the kernel buffers
                await sleep(between(2500, 4000));                                  // and past the heartbeat
                client.balancer.flow();
            }

            fault.end = Date.now();
        }

        await moves;
        publishing = false;
        await Promise.all(publishers);

        // Quiet: every client back, every recovery client caught up (bounded)
        const end = Date.now() + 15000;
        const behind = () => tracked.some((client) => client.connections.at(-1)?.end !== null || (client.kind === 'pulse' && missing(client).length));
        while (behind() && Date.now() < end) {
            await sleep(100);
        }

        await sleep(grace);
    }
    finally {
        for (const client of tracked) {
            await client.close().catch(() => { });
            await client.balancer.close();
        }

        for (const node of nodes) {
            await node.kill();
            await node.link.close();
        }

        await redis.kill();
    }

    // ---- Checks ----

    // Whether `client` should have `pub` at all: user targeting and the filter's `hide`.
    function meant(client: Tracked, pub: Published): boolean {

        return (pub.user === undefined || pub.user === client.user) && pub.hide !== client.user;
    }

    function faultNear(from: number, to: number): boolean {

        return faults.some((fault) => fault.start <= to && (fault.end || Infinity) >= from);
    }

    // Whether `client` was told it cannot have `pub`: recovered: false on its path after the publish started,
    // while the last publish it had was older.
    function excused(client: Tracked, pub: Published): boolean {

        return client.resets.get(pub.path)!.some((reset) => reset.at > pub.start && reset.after < pub.seq);
    }

    // The end of the faults around [from, to] (to itself when none): a node heals a gap once the fault is over.
    function settled(from: number, to: number): number {

        return Math.max(to, ...faults.filter((fault) => fault.start <= to && (fault.end || Infinity) >= from).map((fault) => fault.end || Infinity));
    }

    // What `client` was owed (the documented guarantees):
    // - a recovery client, on a history path: every acknowledged publish after it first connected, unless excused;
    // - any client, on a history path: what was published while one of its connections lasted past the end of the
    //   faults around it plus `grace` (the node heals its own gaps), unless a node logged a gap on the path then
    //   (such a gap is told to recovery sockets only, with 4005) or Redis lost the history meanwhile;
    // - any client, on a path without history: the same, with no fault at all around the publish (at-most-once).
    function owed(client: Tracked, pub: Published): boolean {

        if (!pub.ok || !meant(client, pub)) {
            return false;
        }

        if (client.kind === 'pulse' && historyPaths.has(pub.path)) {
            return pub.start > client.connections[0]!.start && !excused(client, pub);
        }

        const from = pub.start - grace;
        const until = settled(from, pub.ack) + grace;
        if (!historyPaths.has(pub.path) ? faultNear(from, until) : gaps.some((gap) => gap.path === pub.path && gap.at >= from && gap.at <= until) || faults.some((fault) => fault.kind === 'redis-restart' && fault.start <= until && (fault.end || Infinity) >= from)) {
            return false;
        }

        return client.connections.some((connection) => connection.start < pub.start && (connection.end ?? Infinity) > until);
    }

    function missing(client: Tracked, explain = false): string[] {

        const lost: string[] = [];
        for (const pub of published) {
            if (owed(client, pub) && !client.got.get(pub.path)!.includes(pub.seq)) {
                lost.push(`${client.name} ${pub.path} #${pub.seq}` + (explain ? ` ${describe(client, pub)}` : ''));
            }
        }

        return lost;
    }

    // Where a loss sits in the run, to start investigating a failing seed.
    function describe(client: Tracked, pub: Published): string {

        const t = (at: number) => at - origin;
        const around = faults.filter((fault) => fault.start <= pub.ack + 5000 && (fault.end || Infinity) >= pub.start - 5000).map((fault) => `${fault.kind}[${t(fault.start)}..${t(fault.end)}]`);
        const got = client.got.get(pub.path)!;
        const index = got.findIndex((seq) => seq > pub.seq);
        return `(published ${t(pub.start)}..${t(pub.ack)}ms; faults near: ${around.join(' ') || 'none'}; received around: ${got.slice(Math.max(0, index - 3), index + 3).join(',')}; resets: ${client.resets.get(pub.path)!.map((reset) => `${t(reset.at)}ms after #${reset.after}`).join(' ') || 'none'}; gaps: ${gaps.filter((gap) => gap.path === pub.path).map((gap) => `n${gap.node}@${t(gap.at)}`).join(' ') || 'none'}; connections: ${client.connections.filter((c) => c.start <= pub.ack + 5000 && (c.end ?? Infinity) >= pub.start - 5000).map((c) => `${t(c.start)}..${c.end === null ? '' : t(c.end)}`).join(' ')})`;
    }

    const losses: string[] = [];
    const duplicates: string[] = [];
    const reorders: string[] = [];
    const wrong: string[] = [];
    let deliveries = 0;
    let checked = 0;
    let excusedCount = 0;
    const acked = new Map(paths.map((path) => [path, new Set(published.filter((pub) => pub.path === path && pub.ok).map((pub) => pub.seq))]));
    acked.set('broadcast', new Set(broadcasts.filter((pub) => pub.ok).map((pub) => pub.seq)));
    const examine = (client: Tracked, path: string, seqs: number[]) => {

        deliveries += seqs.length;
        const seen = new Set<number>();
        let last = 0;
        for (const [i, seq] of seqs.entries()) {
            if (seen.has(seq)) {
                duplicates.push(`${client.name} ${path} #${seq} (received ${seqs.slice(Math.max(0, i - 8), i + 3).join(',')}; connections ${client.connections.slice(0, 6).map((c) => `${c.start - origin}..${c.end === null ? '' : c.end - origin}`).join(' ')}; faults ${faults.slice(0, 3).map((f) => `${f.kind}[${f.start - origin}..${f.end - origin}]`).join(' ')})`);
            }

            seen.add(seq);
            if (acked.get(path)!.has(seq)) {                 // a refused publish may still land, in any order
                if (seq <= last) {
                    reorders.push(`${client.name} ${path} #${seq} after #${last}`);
                }

                last = seq;
            }
        }
    };

    for (const client of tracked) {
        wrong.push(...client.wrong);
        for (const path of paths) {
            examine(client, path, client.got.get(path)!);
        }

        examine(client, 'broadcast', client.updates);
        losses.push(...missing(client, true));
        for (const pub of published) {
            if (owed(client, pub)) {
                ++checked;
            }
            else if (pub.ok && meant(client, pub) && client.kind === 'pulse' && historyPaths.has(pub.path) && pub.start > client.connections[0]!.start) {
                ++excusedCount;
            }
        }
    }

    const resets = tracked.reduce((sum, client) => sum + [...client.resets.values()].reduce((total, list) => total + list.length, 0), 0);
    const ok = published.filter((pub) => pub.ok).length;
    const faultList = Object.entries(counts).map(([kind, count]) => `${kind}=${count}`).join(' ');
    const summary = `faults seed=${seed} nodes=${scale.nodes} clients=${scale.pulseClients}+${scale.nesClients} publishes=${published.length} (acked ${ok}) broadcasts=${broadcasts.length} deliveries=${deliveries} owed-checked=${checked} excused-by-recovered-false=${excusedCount} recovered-false=${resets} gaps=${gaps.length} slow-cut=${slowCutOffs} ${faultList} losses=${losses.length} duplicates=${duplicates.length} reorders=${reorders.length} wrong=${wrong.length}`;
    return { seed, summary, losses, duplicates, reorders, wrong };
};

// npm run chaos [-- <runs> [<first seed>]]: the large run on consecutive seeds; exits 1 on the first failure.
const cli = async (): Promise<void> => {

    const runs = Number(process.argv[2] ?? 5);
    const first = Number(process.argv[3] ?? process.env.FAULT_SEED ?? Math.floor(Math.random() * 1e9));
    for (let i = 0; i < runs; ++i) {
        const result = await runFaults(first + i, process.env.FAULT_SCALE === 'small' ? small : large);
        console.log(result.summary);
        const problems = [...result.losses, ...result.duplicates, ...result.reorders, ...result.wrong];
        if (problems.length) {
            console.log(problems.slice(0, 50).join('\n'));
            process.exit(1);
        }
    }
};

if (require.main === module) {
    cli().catch((err) => {

        console.error(err);
        process.exit(1);
    });
}
