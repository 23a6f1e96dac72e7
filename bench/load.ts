// Load-generating child process: `node dist/bench/load.js`. Holds thousands of lightweight `ws` client sockets
// and speaks one of two wire protocols:
//   - 'nes': the nes protocol v2 subset (hello with subs, request, ping answers), for @hapi/nes, hapi-pulse and
//            the raw ws baselines (which speak the same subset);
//   - 'sio': engine.io v4 / socket.io v5 packets over a plain WebSocket (what socket.io-client sends with
//            transports: ['websocket']), so that socket.io is not measured through a heavier client than the others.
// Deliveries are counted without parsing (a prefix check), except socket 0 of a fan-out, which checks the order of
// every message, and one message in 64 elsewhere, which is checked for being addressed to its socket.

import { WebSocket } from 'ws';

import { nowMs, serve } from './ipc';
import { presenceCommands } from './load-presence';

type Proto = 'nes' | 'sio';

interface Conn {
    readonly index: number;
    readonly ws: WebSocket;
    readonly group: number;                                    // Which connect() call (e.g. node A / node B)
    readonly checker: boolean;                                 // Parses and checks the order of every fan-out message
    closedByUs: boolean;
    lastSeq: number;
}

interface Pending {
    resolve: (value: unknown) => void;
    reject: (err: Error) => void;
}

const conns: Conn[] = [];
const requests = new Map<number, (at: number, ok: boolean) => void>();
let nextRequestId = 1;
let dropped = 0;
let proto: Proto = 'nes';
let port = 0;
let localAddress: string | undefined;                         // Source address of new sockets (127.0.0.x: more ports)

// Delivery counting
let mode: 'fan' | 'item' | 'off' = 'off';
let delivered = 0;
let bad = 0;
let sampleCounter = 0;
let firstAt = 0;
let lastAt = 0;
let cpuMark = process.cpuUsage();
let bytesMark = 0;
let deflate = false;                                            // offer permessage-deflate (compression scenarios)
let waiter: { total: number; resolve: () => void } | null = null;
let groupDelivered: number[] = [];
// Publish-to-delivery latency: messages whose JSON starts with "t":<nowMs() at publish> (see server-main fanout stamp)
let latencyOn = false;
let latencies: number[] = [];
const maxLatencies = 2_000_000;
const T_KEY = Buffer.from('"t":');

const P = 0x70, U = 0x75, B = 0x62, QUOTE = 0x22;             // "pub"

function isPub(data: Buffer): boolean {

    if (proto === 'nes') {
        // JSON.stringify({ type: 'pub', ... }) starts with {"type":"pub"
        return data.length > 13 && data[9] === P && data[10] === U && data[11] === B && data[12] === QUOTE;
    }

    return data.length > 2 && data[0] === 0x34 && data[1] === 0x32;             // '42': socket.io EVENT without ack id
}

function pubBody(data: Buffer): { seq: number; to: string } {

    if (proto === 'nes') {
        return (JSON.parse(data.toString()) as { message: { seq: number; to: string } }).message;
    }

    return (JSON.parse(data.toString('utf8', 2)) as [string, { seq: number; to: string }])[1];
}

function onPub(conn: Conn, data: Buffer): void {

    if (mode === 'off') {
        return;
    }

    lastAt = nowMs();
    if (delivered === 0) {
        firstAt = lastAt;
    }

    ++delivered;
    groupDelivered[conn.group] = (groupDelivered[conn.group] ?? 0) + 1;
    if (latencyOn && latencies.length < maxLatencies) {
        const at = data.indexOf(T_KEY);
        if (at >= 0) {
            const start = at + T_KEY.length;
            const end = data.indexOf(0x2c, start);              // ','
            latencies.push(lastAt - Number(data.toString('latin1', start, end)));
        }
    }

    if (mode === 'fan') {
        if (conn.checker) {
            const body = pubBody(data);
            if (conn.lastSeq >= 0 && body.seq !== conn.lastSeq + 1) {
                ++bad;
            }

            conn.lastSeq = body.seq;
        }
    }
    else if ((++sampleCounter & 63) === 0) {
        if (pubBody(data).to !== `/item/${conn.index}`) {
            ++bad;
        }
    }

    if (waiter && delivered >= waiter.total) {
        waiter.resolve();
    }
}

// Compression scenarios: one load process inflating every delivery of thousands of sockets would measure its own
// inflate (ws's, on the thread pool: ~50 µs a message here), not the server, while real clients inflate on their own
// CPUs. So against servers that compress without context takeover (nes protocol: hapi-pulse), every socket but the
// checker counts a compressed message from its frame without inflating it (as a pub: below the threshold nothing is
// compressed, and the scenario sends nothing else that large); the checker inflates and checks every message.
// socket.io compresses with context takeover, every message whatever its size: its frames can only be read by
// inflating them, so its clients inflate (its server, at ~100 µs of CPU per delivery, is its limit either way).
const counted = Buffer.from('{"type":"pub","counted":true}');

function countWithoutInflating(ws: WebSocket): void {

    const extension = (ws as unknown as { _extensions: Record<string, { decompress: (data: Buffer, fin: boolean, cb: (err: Error | null, out?: Buffer) => void) => void }> })._extensions['permessage-deflate'];
    if (extension) {
        // Asynchronously, as ws's own inflate answers (its receiver loop expects that)
        extension.decompress = (_data, fin, cb) => process.nextTick(cb, null, fin ? counted : Buffer.alloc(0));
    }
}

// Bytes received on every client socket so far (frame headers included): what crossed the wire.
function bytesRead(): number {

    let bytes = 0;
    for (const conn of conns) {
        bytes += (conn.ws as unknown as { _socket?: { bytesRead: number } })._socket?.bytesRead ?? 0;
    }

    return bytes;
}

function send(conn: Conn, text: string): void {

    if (conn.ws.readyState === WebSocket.OPEN) {
        conn.ws.send(text);
    }
}

function onControl(conn: Conn, data: Buffer, hello: Pending | null): void {

    const text = data.toString();
    if (proto === 'nes') {
        const msg = JSON.parse(text) as { type: string; id?: number; statusCode?: number; payload?: unknown };
        if (msg.type === 'ping') {
            return send(conn, `{"type":"ping","id":${nextRequestId++}}`);
        }

        if (msg.statusCode !== undefined && msg.statusCode >= 400) {
            if (msg.type === 'hello') {
                return hello?.reject(new Error(`hello failed: ${text}`));
            }
        }

        if (msg.type === 'hello') {
            return hello?.resolve(null);
        }

        if (msg.id !== undefined) {                                // request / sub / unsub responses
            const done = requests.get(msg.id);
            if (done) {
                requests.delete(msg.id);
                done(nowMs(), msg.statusCode === undefined || msg.statusCode < 400);
            }
        }

        return;
    }

    // engine.io / socket.io
    switch (text[0]) {
        case '0':                                                   // engine.io OPEN
            return;
        case '2':                                                   // engine.io PING
            return send(conn, '3');
        case '4':
            if (text[1] === '0') {                                 // socket.io CONNECT ack
                return hello?.resolve(null);
            }

            if (text[1] === '4') {                                 // socket.io CONNECT_ERROR
                return hello?.reject(new Error(`connect failed: ${text}`));
            }

            if (text[1] === '3') {                                 // socket.io ACK: 43<id>[...]
                const id = parseInt(text.slice(2), 10);
                const done = requests.get(id);
                if (done) {
                    requests.delete(id);
                    done(nowMs(), true);
                }
            }

            return;
    }
}

function openOne(index: number, subs: string[], timeoutMs: number, group = 0, checker = index === 0): Promise<Conn> {

    const url = proto === 'nes' ? `ws://127.0.0.1:${port}/` : `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url, { perMessageDeflate: deflate, skipUTF8Validation: true, handshakeTimeout: timeoutMs, localAddress });
    const conn: Conn = { index, ws, group, checker, closedByUs: false, lastSeq: -1 };
    if (deflate && !checker && proto === 'nes') {
        ws.once('open', () => countWithoutInflating(ws));
    }

    return new Promise<Conn>((resolve, reject) => {

        let settled = false;
        const hello: Pending = {
            resolve: () => {

                if (!settled) {
                    settled = true;
                    clearTimeout(timer);
                    resolve(conn);
                }
            },
            reject: (err) => {

                if (!settled) {
                    settled = true;
                    clearTimeout(timer);
                    conn.closedByUs = true;
                    ws.terminate();
                    reject(err);
                }
            }
        };

        const timer = setTimeout(() => hello.reject(new Error('connection setup timed out')), timeoutMs);

        ws.on('open', () => {

            if (proto === 'nes') {
                ws.send(JSON.stringify({ type: 'hello', id: nextRequestId++, version: '2', subs: subs.length ? subs : undefined }));
            }
            else {
                ws.send(subs.length ? `40${JSON.stringify({ subs })}` : '40');
            }
        });

        ws.on('message', (data: Buffer) => {

            if (isPub(data)) {
                return onPub(conn, data);
            }

            onControl(conn, data, settled ? null : hello);
        });

        ws.on('error', (err) => hello.reject(err));
        ws.on('close', () => {

            if (!conn.closedByUs) {
                ++dropped;
            }

            hello.reject(new Error('closed during setup'));
        });
    });
}

// ---- Recovery clients (the recovery scenario) ----
// Each keeps its own socket on one history path with recovery negotiated, tracks its position from the hello reply
// (`pulse.positions`) and from every pub (`position`), and checks the publisher's `seq` (0, 1, 2... on that path):
// a jump forward counts as lost, a repeat or step back as duplicated. recDrop closes every socket from the client
// side; recResume reconnects them all at once, each sending its last position in hello.pulse.positions, and
// measures the replay: the hello reply's position P is where the replay ends (protocol.md §8.2).

interface Position { epoch: string; offset: number }

interface RecClient {
    readonly index: number;
    ws: WebSocket | null;
    position: Position | null;
    expectedNext: number;                                      // Next seq this client must see
    lost: number;
    dup: number;
    received: number;
    closedByUs: boolean;
    // Current resume
    sentOffset: number;
    replayUntil: number;                                       // Offset of the hello reply position; -1: not replaying
    replayStart: number;
    replayEnd: number;
    replayed: number;
}

interface RecFrame {
    type: string;
    id?: number;
    statusCode?: number;
    message?: { seq?: number };
    position?: Position;
    pulse?: { positions?: Record<string, Position>; recovered?: Record<string, boolean> };
}

let recPath = '';
let recClients: RecClient[] = [];
let recNotRecovered = 0;
let recUnexpectedClose = 0;
let recProgress: (() => void) | null = null;                  // Called on hello replies and when a replay ends

function recOnPub(client: RecClient, msg: RecFrame): void {

    const at = nowMs();
    ++client.received;
    const seq = msg.message?.seq ?? -1;
    if (seq > client.expectedNext) {
        client.lost += seq - client.expectedNext;
    }
    else if (seq < client.expectedNext) {
        ++client.dup;
    }

    client.expectedNext = Math.max(client.expectedNext, seq + 1);
    if (msg.position) {
        client.position = msg.position;
        if (client.replayUntil >= 0 && !client.replayEnd) {
            if (msg.position.offset <= client.replayUntil) {
                ++client.replayed;
            }

            if (msg.position.offset >= client.replayUntil) {
                client.replayEnd = at;
                recProgress?.();                                   // Otherwise recUntil polls every 50 ms
            }
        }
    }
}

function recOpen(client: RecClient, timeoutMs: number): Promise<void> {

    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, skipUTF8Validation: true, handshakeTimeout: timeoutMs });
    client.ws = ws;
    client.closedByUs = false;
    const resuming = client.position !== null;

    return new Promise<void>((resolve, reject) => {

        let settled = false;
        const done = (err?: Error) => {

            if (!settled) {
                settled = true;
                clearTimeout(timer);
                if (err) {
                    client.closedByUs = true;
                    ws.terminate();
                    return reject(err);
                }

                resolve();
            }
        };

        const timer = setTimeout(() => done(new Error('recovery hello timed out')), timeoutMs);

        ws.on('open', () => {

            const pulse = resuming ? { recovery: true, positions: { [recPath]: client.position } } : { recovery: true };
            if (resuming) {
                client.sentOffset = client.position!.offset;
                client.replayStart = nowMs();
                client.replayEnd = 0;
                client.replayed = 0;
                client.replayUntil = -1;
            }

            ws.send(JSON.stringify({ type: 'hello', id: nextRequestId++, version: '2', subs: [recPath], pulse }));
        });

        ws.on('message', (data: Buffer) => {

            const msg = JSON.parse(data.toString()) as RecFrame;
            if (msg.type === 'pub') {
                return recOnPub(client, msg);
            }

            if (msg.type === 'ping') {
                return ws.send(`{"type":"ping","id":${nextRequestId++}}`);
            }

            if (msg.type === 'hello') {
                if (msg.statusCode !== undefined && msg.statusCode >= 400) {
                    return done(new Error(`hello failed: ${data.toString()}`));
                }

                const position = msg.pulse?.positions?.[recPath];
                if (!position) {
                    return done(new Error(`hello reply without pulse.positions for ${recPath}: ${data.toString()}`));
                }

                if (resuming) {
                    if (msg.pulse?.recovered?.[recPath] !== true) {
                        ++recNotRecovered;
                    }

                    client.replayUntil = position.offset;
                    if (position.offset <= client.sentOffset) {
                        client.replayEnd = nowMs();                 // Nothing missed
                    }
                }

                client.position = position;
                done();
                recProgress?.();
            }
        });

        ws.on('error', (err) => done(err));
        ws.on('close', () => {

            if (!client.closedByUs) {
                ++recUnexpectedClose;
            }

            done(new Error('closed during recovery hello'));
        });
    });
}

async function recAll(inflight: number, timeoutMs: number, deadlineMs: number): Promise<{ ok: number; failed: number; firstError: string }> {

    const deadline = nowMs() + deadlineMs;
    let next = 0;
    let ok = 0;
    let failed = 0;
    let firstError = '';
    const worker = async () => {

        while (next < recClients.length && nowMs() < deadline) {
            const client = recClients[next++]!;
            try {
                await recOpen(client, timeoutMs);
                ++ok;
            }
            catch (err) {
                ++failed;
                firstError = firstError || (err as Error).message;
            }
        }
    };

    await Promise.all(Array.from({ length: Math.min(inflight, recClients.length) }, worker));
    failed += recClients.length - ok - failed;
    return { ok, failed, firstError };
}

// Resolves when `ready()` holds or after `timeoutMs`, re-checking on every recovery event (and every 50 ms).
function recUntil(ready: () => boolean, timeoutMs: number): Promise<boolean> {

    return new Promise<boolean>((resolve) => {

        const finish = () => {

            recProgress = null;
            clearTimeout(timer);
            clearInterval(poll);
            resolve(ready());
        };

        const timer = setTimeout(finish, timeoutMs);
        const poll = setInterval(() => ready() && finish(), 50);
        recProgress = () => ready() && finish();
        if (ready()) {
            finish();
        }
    });
}

const recovery = {
    // Opens `count` recovery clients on `path` (all expecting seq 0 first: connect them before publishing starts).
    recConnect: async (args: Record<string, unknown>) => {

        port = Number(args.port);
        recPath = String(args.path);
        recNotRecovered = 0;
        recUnexpectedClose = 0;
        recClients = Array.from({ length: Number(args.count) }, (_, index): RecClient => ({
            index, ws: null, position: null, expectedNext: 0, lost: 0, dup: 0, received: 0, closedByUs: false,
            sentOffset: -1, replayUntil: -1, replayStart: 0, replayEnd: 0, replayed: 0
        }));

        const t0 = nowMs();
        const result = await recAll(Number(args.inflight ?? 50), Number(args.timeoutMs ?? 10_000), Number(args.totalTimeoutMs ?? 60_000));
        return { connected: result.ok, failed: result.failed, firstError: result.firstError, ms: nowMs() - t0 };
    },

    // Client-side close of every recovery socket; resolves once all are closed (at most 3 s).
    recDrop: async () => {

        const closing = recClients.map((client) => new Promise<void>((resolve) => {

            const ws = client.ws;
            client.closedByUs = true;
            if (!ws || ws.readyState === WebSocket.CLOSED) {
                return resolve();
            }

            ws.once('close', () => resolve());
            ws.terminate();
        }));

        await Promise.race([Promise.all(closing), new Promise((resolve) => setTimeout(resolve, 3_000))]);
        return {};
    },

    // Reconnects every client with its last position, `inflight` at a time, then waits (at most `timeoutMs`) for
    // every replay to end. Window = last replay end − first hello sent.
    recResume: async (args: Record<string, unknown>) => {

        const timeoutMs = Number(args.timeoutMs ?? 15_000);
        const notRecoveredBefore = recNotRecovered;
        const t0 = nowMs();
        const result = await recAll(Number(args.inflight ?? recClients.length), 10_000, timeoutMs);
        const helloMs = nowMs() - t0;
        const complete = await recUntil(() => recClients.every((c) => c.replayEnd > 0 || c.ws?.readyState !== WebSocket.OPEN), Math.max(0, timeoutMs - helloMs));
        const started = recClients.filter((c) => c.replayStart > 0);
        const first = Math.min(...started.map((c) => c.replayStart));
        const last = Math.max(...started.map((c) => c.replayEnd));
        const perClient = Float64Array.from(started.filter((c) => c.replayEnd > 0).map((c) => c.replayEnd - c.replayStart)).sort();
        return {
            resumed: result.ok,
            failed: result.failed,
            firstError: result.firstError,
            complete,
            helloMs,
            replayed: recClients.reduce((sum, c) => sum + c.replayed, 0),
            missedAtResume: recClients.reduce((sum, c) => sum + Math.max(0, c.replayUntil - c.sentOffset), 0),
            windowMs: last - first,
            p50Ms: percentile(perClient, 0.5),
            p99Ms: percentile(perClient, 0.99),
            maxMs: perClient.length ? perClient[perClient.length - 1]! : NaN,
            notRecovered: recNotRecovered - notRecoveredBefore
        };
    },

    // Waits (at most `timeoutMs`) until every client has seen seq `last`, then reports lost / duplicated per client
    // (a client that never saw the tail counts the missing tail as lost).
    recCheck: async (args: Record<string, unknown>) => {

        const last = Number(args.last);
        await recUntil(() => recClients.every((c) => c.expectedNext > last), Number(args.timeoutMs ?? 10_000));
        const lostBy = recClients.map((c) => c.lost + Math.max(0, last + 1 - c.expectedNext));
        return {
            clients: recClients.length,
            received: recClients.reduce((sum, c) => sum + c.received, 0),
            lost: lostBy.reduce((a, b) => a + b, 0),
            dup: recClients.reduce((sum, c) => sum + c.dup, 0),
            clientsLost: lostBy.filter((n) => n > 0).length,
            clientsDup: recClients.filter((c) => c.dup > 0).length,
            unexpectedClose: recUnexpectedClose,
            notRecovered: recNotRecovered
        };
    },

    recClose: async () => {

        for (const client of recClients) {
            client.closedByUs = true;
            client.ws?.terminate();
        }

        recClients = [];
        return {};
    }
};

function percentile(sorted: Float64Array, p: number): number {

    if (!sorted.length) {
        return NaN;
    }

    return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

serve({
    // Opens `count` sockets, at most `inflight` setups at a time; each subscribes (in its hello) to nothing, to
    // '/fan', or to '/item/<its index>'. Successive calls may target different ports (servers); `group` tags the
    // sockets of one call for per-group delivery counts, and the first socket of a call checks fan-out order.
    // `first` numbers the sockets from there (several load processes sharing one range of /item ids);
    // `localAddress` binds them to a source address (each address has its own ephemeral ports).
    connect: async (args) => {

        proto = args.proto as Proto;
        port = Number(args.port);
        localAddress = args.localAddress === undefined ? undefined : String(args.localAddress);
        deflate = args.deflate === true;
        const count = Number(args.count);
        const inflight = Number(args.inflight);
        const subs = String(args.subs);
        const group = Number(args.group ?? 0);
        const timeoutMs = Number(args.timeoutMs ?? 10_000);
        const deadline = nowMs() + Number(args.totalTimeoutMs ?? 60_000);
        const base = args.first === undefined ? conns.length : Number(args.first);
        let started = 0;
        let failed = 0;
        let firstError = '';
        const setupMs: number[] = [];                               // each socket's connect + hello, for its spread
        const cpu = process.cpuUsage();
        const t0 = nowMs();

        const worker = async () => {

            while (started < count && nowMs() < deadline) {
                const index = base + started++;
                const paths = subs === 'fan' ? ['/fan'] : (subs === 'item' ? [`/item/${index}`] : []);
                const opened = nowMs();
                try {
                    conns.push(await openOne(index, paths, timeoutMs, group, index === base));
                    setupMs.push(nowMs() - opened);
                }
                catch (err) {
                    ++failed;
                    firstError = firstError || (err as Error).message;
                }
            }
        };

        await Promise.all(Array.from({ length: Math.min(inflight, count) }, worker));
        conns.sort((a, b) => a.index - b.index);
        const usage = process.cpuUsage(cpu);
        if (started < count) {
            failed += count - started;
            firstError = firstError || `setup deadline reached after ${started} connections`;
        }

        const sorted = Float64Array.from(setupMs).sort();
        const setup = { p99: percentile(sorted, 0.99), max: sorted.length ? sorted[sorted.length - 1]! : NaN };
        return { connected: count - failed, failed, ms: nowMs() - t0, clientCpuUs: usage.user + usage.system, firstError, setup };
    },

    // Starts counting deliveries. latency: 'reset' starts a new latency sample, 'keep' adds to it, absent turns it off.
    arm: (args) => {

        mode = args.mode as 'fan' | 'item';
        latencyOn = args.latency === 'reset' || args.latency === 'keep';
        if (args.latency !== 'keep') {
            latencies = [];
        }

        groupDelivered = [];
        delivered = 0;
        bad = 0;
        firstAt = 0;
        lastAt = 0;
        for (const conn of conns) {
            conn.lastSeq = -1;
        }

        cpuMark = process.cpuUsage();
        bytesMark = bytesRead();
        return {};
    },

    // Resolves once `total` deliveries were counted since arm, or after `timeoutMs`.
    wait: async (args) => {

        const total = Number(args.total);
        const timeoutMs = Number(args.timeoutMs);
        if (delivered < total) {
            await new Promise<void>((resolve) => {

                const timer = setTimeout(() => {

                    waiter = null;
                    resolve();
                }, timeoutMs);

                waiter = {
                    total,
                    resolve: () => {

                        clearTimeout(timer);
                        waiter = null;
                        resolve();
                    }
                };
            });
        }

        const usage = process.cpuUsage(cpuMark);
        mode = 'off';
        return { delivered, bad, firstAt, lastAt, dropped, open: conns.length - dropped, clientCpuUs: usage.user + usage.system, groups: groupDelivered, bytes: bytesRead() - bytesMark };
    },

    // The latency sample itself (ms), for merging the samples of several load processes.
    latencies: () => ({ values: latencies }),

    // Percentiles of the latency sample taken since arm({ latency: 'reset' }).
    latency: () => {

        const sorted = Float64Array.from(latencies).sort();
        return { count: sorted.length, p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), maxMs: sorted.length ? sorted[sorted.length - 1]! : NaN };
    },

    ...recovery,

    ...presenceCommands,

    // Closed-loop request round trips on the first `concurrency` sockets for `durationMs`.
    requests: async (args) => {

        const concurrency = Math.min(Number(args.concurrency), conns.length);
        const durationMs = Number(args.durationMs);
        const maxCount = Number(args.maxCount);
        const latencies = new Float64Array(maxCount);
        let count = 0;
        let errors = 0;
        const cpu = process.cpuUsage();
        const t0 = nowMs();
        const stopAt = t0 + durationMs;

        const one = (conn: Conn): Promise<boolean> => {

            const id = nextRequestId++;
            const start = nowMs();
            return new Promise<boolean>((resolve) => {

                const timer = setTimeout(() => {

                    requests.delete(id);
                    ++errors;
                    resolve(false);
                }, 5_000);

                requests.set(id, (at, ok) => {

                    clearTimeout(timer);
                    if (!ok) {
                        ++errors;
                    }
                    else if (count < maxCount) {
                        latencies[count++] = at - start;
                    }

                    resolve(ok);
                });

                send(conn, proto === 'nes' ?
                    `{"type":"request","id":${id},"method":"GET","path":"/echo"}` :
                    `42${id}["req",{"method":"GET","path":"/echo"}]`);
            });
        };

        const loop = async (conn: Conn) => {

            while (nowMs() < stopAt && count < maxCount && conn.ws.readyState === WebSocket.OPEN) {
                await one(conn);
            }
        };

        await Promise.all(conns.slice(0, concurrency).map(loop));
        const ms = nowMs() - t0;
        const usage = process.cpuUsage(cpu);
        const sorted = latencies.slice(0, count).sort();
        return {
            count,
            errors,
            ms,
            p50Ms: percentile(sorted, 0.5),
            p99Ms: percentile(sorted, 0.99),
            clientCpuUs: usage.user + usage.system
        };
    },

    // Subscribes every open socket to `path` (nes: a sub message; socket.io: a 'sub' emit with ack), `inflight` at a time.
    // Every socket subscribes to `path`, or with `spread` to `per` consecutive paths of /multi/0 … /multi/<spread - 1>
    // (socket i: /multi/i, /multi/i+1, … modulo spread), one sub at a time per socket.
    subscribeAll: async (args) => {

        const path = String(args.path);
        const spread = Number(args.spread ?? 0);
        const per = Number(args.per ?? 1);
        const inflight = Number(args.inflight ?? 100);
        const t0 = nowMs();
        let next = 0;
        let failed = 0;

        const one = (conn: Conn, target: string) => new Promise<void>((resolve) => {

            const id = nextRequestId++;
            const timer = setTimeout(() => {

                requests.delete(id);
                ++failed;
                resolve();
            }, 15_000);

            requests.set(id, (_at, ok) => {

                clearTimeout(timer);
                failed += ok ? 0 : 1;
                resolve();
            });

            send(conn, proto === 'nes' ? JSON.stringify({ type: 'sub', id, path: target }) : `42${id}${JSON.stringify(['sub', target])}`);
        });

        const each = async (conn: Conn) => {

            for (let j = 0; j < (spread ? per : 1); ++j) {
                await one(conn, spread ? `/multi/${(conn.index + j) % spread}` : path);
            }
        };

        const worker = async () => {

            while (next < conns.length) {
                await each(conns[next++]!);
            }
        };

        await Promise.all(Array.from({ length: Math.min(inflight, conns.length) }, worker));
        return { ms: nowMs() - t0, failed };
    },

    status: () => ({ open: conns.filter((c) => c.ws.readyState === WebSocket.OPEN).length, dropped }),

    closeAll: async () => {

        const closing = conns.splice(0).map((conn) => new Promise<void>((resolve) => {

            conn.closedByUs = true;
            if (conn.ws.readyState === WebSocket.CLOSED) {
                return resolve();
            }

            conn.ws.once('close', () => resolve());
            conn.ws.terminate();
        }));

        await Promise.race([Promise.all(closing), new Promise((resolve) => setTimeout(resolve, 3_000))]);
        dropped = 0;
        return {};
    },

    stop: () => {

        for (const client of recClients) {
            client.closedByUs = true;
            client.ws?.terminate();
        }

        for (const conn of conns) {
            conn.closedByUs = true;
            conn.ws.terminate();
        }

        setImmediate(() => process.exit(0));
        return {};
    }
});
