// OpenTelemetry metrics after real traffic, read with the SDK's own reader: what an application that registers
// an SDK (or passes a MeterProvider) sees, and that nothing is exported without one.

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import * as Otel from '@opentelemetry/api';
import { AggregationTemporality, DataPointType, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import type { DataPoint, Histogram, MetricData } from '@opentelemetry/sdk-metrics';

import * as Pulse from '../lib';
import { RedisBroker } from '../lib/redis';
import { jsonAuth, Nes, Peer, redisUrl, server, skipWithoutRedis, teardown, until, url, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const cleanup = teardown(lab);

// Collects on demand, cumulative: every value is the total since the server started.
class Reader extends MetricReader {

    constructor() {

        super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
    }

    protected override onForceFlush(): Promise<void> {

        return Promise.resolve();
    }

    protected override onShutdown(): Promise<void> {

        return Promise.resolve();
    }

    // name -> data points
    async read(): Promise<Map<string, MetricData>> {

        const { resourceMetrics, errors } = await this.collect();
        expect(errors).to.equal([]);
        const metrics = new Map<string, MetricData>();
        for (const scope of resourceMetrics.scopeMetrics) {
            expect(scope.scope).to.include({ name: 'hapi-pulse', version: require('../../package.json').version });
            for (const metric of scope.metrics) {
                metrics.set(metric.descriptor.name, metric);
            }
        }

        return metrics;
    }
}

// Registers a global MeterProvider for one test; the API's global slot goes away with it (lab checks for leaked globals).
const registerGlobal = (provider: MeterProvider): void => {

    const slot = Symbol.for('opentelemetry.js.api.1');
    const existed = slot in globalThis;
    expect(Otel.metrics.setGlobalMeterProvider(provider)).to.be.true();
    cleanup(() => {

        Otel.metrics.disable();
        if (!existed) {
            delete (globalThis as any)[slot];
        }
    });
};

const meter = (): { reader: Reader; provider: MeterProvider } => {

    const reader = new Reader();
    const provider = new MeterProvider({ readers: [reader] });
    cleanup(() => provider.shutdown());
    return { reader, provider };
};

// The value of the point with exactly these attributes (undefined when there is none).
const point = <T = number>(metrics: Map<string, MetricData>, name: string, attributes: Record<string, unknown> = {}): T | undefined => {

    const metric = metrics.get(name);
    const found = (metric?.dataPoints as DataPoint<unknown>[] | undefined)?.find((candidate) => JSON.stringify(sorted(candidate.attributes)) === JSON.stringify(sorted(attributes)));
    return found?.value as T | undefined;
};

const sorted = (object: Record<string, unknown>) => Object.fromEntries(Object.entries(object).sort(([a], [b]) => a.localeCompare(b)));

const histogram = (metrics: Map<string, MetricData>, name: string, attributes: Record<string, unknown> = {}): Histogram | undefined => point<Histogram>(metrics, name, attributes);

const asUser = (user?: string) => (user ? { auth: { headers: { authorization: JSON.stringify({ user }) } } } : {});

// A raw socket, said hello to as `user` (anonymous without one), subscribed to `subs`.
const member = async (srv: Hapi.Server, user: string | undefined, subs: string[]): Promise<Peer> => {

    const peer = await Peer.open(url(srv));
    expect((await peer.hello({ ...asUser(user), subs })).statusCode).to.not.exist();
    return peer;
};

// Until the presence store has `users` members and `anonymous` sockets on `path` (writes are batched).
const settled = async (srv: Hapi.Server, path: string, users: number, anonymous = 0): Promise<void> => {

    const written = async () => {

        const count = await srv.presence.count(path);
        return count.users === users && count.anonymous === anonymous;
    };

    for (let tries = 0; !await written(); ++tries) {
        expect(tries, `presence of ${path}`).to.be.below(600);
        await wait(5);
    }
};

const bytes = (frames: string[], type: string): number => frames.filter((frame) => JSON.parse(frame).type === type).reduce((sum, frame) => sum + Buffer.byteLength(frame), 0);

describe('Metrics', () => {

    it('counts connections, subscriptions, messages, bytes, publishes and fan-out after real traffic', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider } });
        srv.subscription('/item/{id}');
        srv.subscription('/news');
        srv.route({ method: 'GET', path: '/h/{id}', handler: () => ({ ok: true }) });
        srv.route({ method: '*', path: '/any', handler: () => 'any' });
        await srv.start();
        cleanup(() => srv.stop());

        const a = await Peer.open(url(srv));
        const b = await Peer.open(url(srv));
        const hello = { type: 'hello', id: 1, version: '2' };
        await a.request({ ...hello, subs: ['/item/5', '/news'] });
        await b.request({ ...hello, subs: ['/item/5'] });
        await b.request({ type: 'sub', id: 2, path: '/item/6' });
        await a.request({ type: 'request', id: 3, method: 'GET', path: '/h/1' });
        await a.request({ type: 'request', id: 4, method: 'GET', path: '/missing' });
        await a.request({ type: 'request', id: 5, method: 'PATCH', path: '/any' });
        a.send('not json');
        await a.next();

        for (let i = 0; i < 3; ++i) {
            await srv.publish('/item/5', { n: i });
        }

        await srv.publish('/news', 'x');
        await srv.publish('/news', 'y'.repeat(300));                        // frame lengths in 2, 4 and 10 header bytes
        await srv.publish('/news', 'z'.repeat(70000));
        await srv.broadcast('all');
        await until(() => a.frames.length === 12 && b.frames.length === 6);

        let metrics = await reader.read();
        expect(point(metrics, 'pulse.server.active_connections')).to.equal(2);
        expect(metrics.get('pulse.server.active_connections')!.descriptor.unit).to.equal('{connection}');
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/item/{id}' })).to.equal(3);
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/news' })).to.equal(1);

        expect(point(metrics, 'pulse.server.received.messages', { 'pulse.message.type': 'hello' })).to.equal(2);
        expect(point(metrics, 'pulse.server.received.messages', { 'pulse.message.type': 'sub' })).to.equal(1);
        expect(point(metrics, 'pulse.server.received.messages', { 'pulse.message.type': 'request' })).to.equal(3);
        expect(point(metrics, 'pulse.server.received.messages', { 'pulse.message.type': 'invalid' })).to.equal(1);
        expect(point(metrics, 'pulse.server.received.bytes', { 'pulse.message.type': 'invalid' })).to.equal('not json'.length);
        const requests = [{ type: 'request', id: 3, method: 'GET', path: '/h/1' }, { type: 'request', id: 4, method: 'GET', path: '/missing' }, { type: 'request', id: 5, method: 'PATCH', path: '/any' }];
        expect(point(metrics, 'pulse.server.received.bytes', { 'pulse.message.type': 'request' })).to.equal(requests.reduce((sum, request) => sum + JSON.stringify(request).length, 0));

        const frames = [...a.frames, ...b.frames];
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'pub' })).to.equal(9);      // 3 × 2 + 3
        expect(point(metrics, 'pulse.server.sent.bytes', { 'pulse.message.type': 'pub' })).to.equal(bytes(frames, 'pub'));
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'update' })).to.equal(2);
        expect(point(metrics, 'pulse.server.sent.bytes', { 'pulse.message.type': 'update' })).to.equal(bytes(frames, 'update'));
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'hello' })).to.equal(2);
        expect(point(metrics, 'pulse.server.sent.bytes', { 'pulse.message.type': 'hello' })).to.equal(bytes(frames, 'hello'));
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'request' })).to.equal(3);
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'sub' })).to.equal(1);
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'error' })).to.equal(1);       // the bad frame's
        expect(point(metrics, 'pulse.server.sent.bytes', { 'pulse.message.type': 'error' })).to.equal(Buffer.byteLength(a.frames.find((frame) => frame.startsWith('{"statusCode"'))!));

        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/item/{id}' })).to.equal(3);
        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/news' })).to.equal(3);
        expect(histogram(metrics, 'pulse.broker.publish.duration', { 'pulse.route': '/item/{id}' })!.count).to.equal(3);
        const fanout = histogram(metrics, 'pulse.server.delivery.recipients', { 'pulse.route': '/item/{id}' })!;
        expect(fanout.count).to.equal(3);
        expect(fanout.sum).to.equal(6);
        expect(fanout.max).to.equal(2);
        const lag = histogram(metrics, 'pulse.broker.delivery.lag', { 'pulse.route': '/item/{id}' })!;
        expect(lag.count).to.equal(3);
        expect(lag.max!).to.be.below(5);
        expect(metrics.get('pulse.broker.delivery.lag')!.descriptor.unit).to.equal('s');

        const ok = histogram(metrics, 'pulse.server.request.duration', { 'http.request.method': 'GET', 'http.route': '/h/{id}', 'http.response.status_code': 200 })!;
        expect(ok.count).to.equal(1);
        expect(ok.sum!).to.be.above(0);
        expect(histogram(metrics, 'pulse.server.request.duration', { 'http.request.method': '_OTHER', 'http.route': '/{p*}', 'http.response.status_code': 404 })!.count).to.equal(1);
        expect(histogram(metrics, 'pulse.server.request.duration', { 'http.request.method': '_OTHER', 'http.route': '/any', 'http.response.status_code': 200 })!.count).to.equal(1);

        // Closes: by the client with a code, and by the server (hello timeout is the server's code, not the echo)
        a.ws.close(4321);
        b.ws.close(1000);
        await until(() => srv.pulseStats().sockets === 0);
        metrics = await reader.read();
        expect(point(metrics, 'pulse.server.active_connections')).to.equal(0);
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/item/{id}' })).to.equal(0);          // none left
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/news' })).to.equal(0);
        expect(histogram(metrics, 'pulse.server.connection.duration', { 'pulse.close.code': 0 })!.count).to.equal(1);       // a code of the client's own
        expect(histogram(metrics, 'pulse.server.connection.duration', { 'pulse.close.code': 1000 })!.count).to.equal(1);
    });

    it('records the server\'s close code, limit hits, slow consumers and refused upgrades', async () => {

        const { reader, provider } = meter();
        let accept = true;
        const srv = await server({
            metrics: { meterProvider: provider },
            auth: { type: 'direct', timeout: 100, index: true, maxConnectionsPerUser: 1 },
            maxConnections: 3,
            origin: ['http://good'],
            onUpgrade: () => {

                if (accept === null) {
                    throw new Error('boom');
                }

                return accept;
            },
            limits: { maxSubscriptions: 1, maxInFlight: 1, maxPayload: 1024, maxBufferedBytes: 1024, rate: { messages: 50, interval: 60000 } }
        }, 'pulse', async (hapi) => {

            await hapi.register(require('@hapi/basic'));
            hapi.auth.strategy('default', 'basic', { validate: (_request: unknown, user: string) => ({ isValid: true, credentials: { user } }) });
            hapi.auth.default('default');
        });

        srv.subscription('/a/{id}', { auth: { mode: 'optional' } });
        let release: () => void = () => { };
        srv.route({ method: 'GET', path: '/slow', options: { auth: false }, handler: () => new Promise((resolve) => { release = () => resolve('done'); }) });
        await srv.start();
        cleanup(() => srv.stop());

        const origin = { origin: 'http://good' };
        const auth = (user: string) => ({ headers: { authorization: 'Basic ' + Buffer.from(`${user}:x`).toString('base64') } });

        // Refused upgrades
        await expect(Peer.open(url(srv), { origin: 'http://evil' })).to.reject(/403/);
        accept = false;
        await expect(Peer.open(url(srv), origin)).to.reject(/403/);
        accept = null as unknown as boolean;
        await expect(Peer.open(url(srv), origin)).to.reject(/500/);
        accept = true;

        // Hello timeout: the server closes with 4000
        const idle = await Peer.open(url(srv), origin);
        expect((await idle.closedWith()).code).to.equal(4000);

        const peer = await Peer.open(url(srv), origin);
        await peer.hello({ auth: auth('john') });
        const other = await Peer.open(url(srv), origin);
        const second = await other.hello({ auth: auth('john') });
        expect(second.statusCode).to.equal(503);                                            // maxConnectionsPerUser
        await other.closedWith();

        expect((await peer.request({ type: 'sub', id: 2, path: '/a/1' })).type).to.equal('sub');
        expect((await peer.request({ type: 'sub', id: 3, path: '/a/2' })).statusCode).to.equal(429);          // maxSubscriptions
        peer.send({ type: 'request', id: 4, method: 'GET', path: '/slow' });
        expect((await peer.request({ type: 'request', id: 5, method: 'GET', path: '/slow' })).statusCode).to.equal(429);      // maxInFlight
        release();
        await peer.next();

        const crowd = [await Peer.open(url(srv), origin), await Peer.open(url(srv), origin)];
        await expect(Peer.open(url(srv), origin)).to.reject(/503/);                          // maxConnections
        crowd.forEach((member) => member.ws.terminate());
        await until(() => srv.pulseStats().sockets === 1);

        const big = await Peer.open(url(srv), origin);
        big.send('x'.repeat(2048));
        expect((await big.closedWith()).code).to.equal(1009);                                  // maxPayload
        await until(() => srv.pulseStats().sockets === 1);

        const garbled = await Peer.open(url(srv), origin);
        (garbled.ws as any)._socket.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28]));          // masked text frame, bad UTF-8
        expect((await garbled.closedWith()).code).to.equal(1007);
        await until(() => srv.pulseStats().sockets === 1);

        const unmasked = await Peer.open(url(srv), origin);
        (unmasked.ws as any)._socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69]));                     // a client's frame must be masked
        expect((await unmasked.closedWith()).code).to.equal(1002);
        await until(() => srv.pulseStats().sockets === 1);

        const chatty = await Peer.open(url(srv), origin);
        await chatty.hello({ auth: auth('chatty') });
        for (let i = 0; i < 60; ++i) {
            chatty.send({ type: 'ping', id: i });
        }

        expect((await chatty.closedWith()).code).to.equal(4004);                               // rate

        // Slow consumer: it stops reading while the server keeps sending
        (peer.ws as any)._socket.pause();
        await srv.eachSocket(async (socket) => {

            for (let i = 0; i < 256 && socket.isOpen(); ++i) {
                await socket.send('y'.repeat(1024 * 1024));
                await new Promise((resolve) => setImmediate(resolve));
            }
        });

        peer.ws.terminate();
        await until(() => srv.pulseStats().sockets === 0);

        const metrics = await reader.read();
        expect(point(metrics, 'pulse.server.rejected_upgrades', { 'pulse.reason': 'origin' })).to.equal(1);
        expect(point(metrics, 'pulse.server.rejected_upgrades', { 'pulse.reason': 'refused' })).to.equal(1);
        expect(point(metrics, 'pulse.server.rejected_upgrades', { 'pulse.reason': 'failed' })).to.equal(1);
        expect(point(metrics, 'pulse.server.rejected_upgrades', { 'pulse.reason': 'maxConnections' })).to.equal(1);
        for (const limit of ['maxConnections', 'maxConnectionsPerUser', 'maxSubscriptions', 'maxInFlight', 'maxPayload', 'rate', 'maxBufferedBytes']) {
            expect(point(metrics, 'pulse.server.limit.hits', { 'pulse.limit': limit }), limit).to.equal(1);
        }

        expect(point(metrics, 'pulse.server.slow_consumer.disconnects')).to.equal(1);
        for (const code of [4000, 4003, 4004, 1009, 1008, 1007, 1002]) {
            expect(histogram(metrics, 'pulse.server.connection.duration', { 'pulse.close.code': code }), `close code ${code}`).to.exist();
        }
    });

    it('measures targeted, filtered and history publishes', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider }, auth: { type: 'direct', index: true } }, 'pulse', async (hapi) => {

            await hapi.register(require('@hapi/basic'));
            hapi.auth.strategy('default', 'basic', { validate: (_request: unknown, user: string) => ({ isValid: true, credentials: { user } }) });
            hapi.auth.default('default');
        });

        srv.subscription('/mine', { auth: { index: true } });
        srv.subscription('/filtered', { filter: (_path, message) => message !== 'dropped' });
        srv.subscription('/kept', { history: { size: 10, ttl: 60000 } });
        await srv.start();
        cleanup(() => srv.stop());

        const john = await Peer.open(url(srv));
        await john.hello({ auth: { headers: { authorization: 'Basic ' + Buffer.from('john:x').toString('base64') } }, subs: ['/mine', '/filtered', '/kept'] });
        await srv.publish('/mine', 'for john', { user: 'john' });
        await srv.publish('/mine', 'for nobody here', { user: 'jane' });
        await srv.publish('/filtered', 'dropped');
        await srv.publish('/filtered', 'kept');
        await srv.publish('/kept', 'with a position');
        await until(() => john.frames.length === 4);

        const metrics = await reader.read();
        const mine = histogram(metrics, 'pulse.server.delivery.recipients', { 'pulse.route': '/mine' })!;
        expect([mine.count, mine.sum, mine.max]).to.equal([2, 1, 1]);                       // john's socket, then none
        const filtered = histogram(metrics, 'pulse.server.delivery.recipients', { 'pulse.route': '/filtered' })!;
        expect([filtered.count, filtered.sum]).to.equal([2, 2]);                             // before the filter
        expect(point(metrics, 'pulse.server.sent.messages', { 'pulse.message.type': 'pub' })).to.equal(3);
        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/filtered' })).to.equal(2);
        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/kept' })).to.equal(1);
        expect(histogram(metrics, 'pulse.broker.delivery.lag', { 'pulse.route': '/kept' })!.count).to.equal(1);
        john.close();
    });

    it('counts a publish to several paths under each path\'s route, and its delivery lag on each path held', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider } });
        srv.subscription('/room/{id}');
        srv.subscription('/news', { filter: () => true });
        await srv.start();
        cleanup(() => srv.stop());

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/room/1', '/news'] });
        await srv.publish(['/room/1', '/room/2', '/news', '/nowhere'], 'everywhere');
        await until(() => peer.frames.length === 3);                            // the hello reply, then one pub per path held

        const metrics = await reader.read();
        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/room/{id}' })).to.equal(2);
        expect(point(metrics, 'pulse.server.publishes', { 'pulse.route': '/news' })).to.equal(1);
        expect(histogram(metrics, 'pulse.broker.publish.duration', { 'pulse.route': '/room/{id}' })!.count).to.equal(2);
        expect(histogram(metrics, 'pulse.broker.delivery.lag', { 'pulse.route': '/room/{id}' })!.count).to.equal(1);        // no socket on /room/2
        expect(histogram(metrics, 'pulse.broker.delivery.lag', { 'pulse.route': '/news' })!.count).to.equal(1);
        peer.close();
    });

    it('validates the metrics option', async () => {

        await expect(server({ metrics: 'yes' })).to.reject(/Invalid hapi-pulse configuration: "metrics" must be one of \[boolean, object\]/);
        await expect(server({ metrics: { meterProvider: {} } })).to.reject(/meterProvider.getMeter" is required/);
        await expect(server({ metrics: { meterProvider: new MeterProvider(), other: 1 } })).to.reject(/"metrics.other" is not allowed/);
        await expect(server({ metrics: false })).to.not.reject();
    });

    it('counts recovery outcomes by route', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider } });
        srv.subscription('/feed/{id}', { history: { size: 10, ttl: 60000 } });
        await srv.start();
        cleanup(() => srv.stop());

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ subs: ['/feed/1'], pulse: { recovery: true } });
        const start = hello.pulse.positions['/feed/1'];
        await srv.publish('/feed/1', 'a');
        await peer.next();
        await peer.request({ type: 'unsub', id: 2, path: '/feed/1' });
        await srv.publish('/feed/1', 'b');

        const back = await peer.reply({ type: 'sub', id: 3, path: '/feed/1', position: start });
        expect(back.pulse.recovered).to.be.true();
        const lost = await peer.reply({ type: 'sub', id: 4, path: '/feed/2', position: { epoch: 'elsewhere', offset: 4 } });
        expect(lost.pulse.recovered).to.be.false();
        await peer.reply({ type: 'sub', id: 5, path: '/feed/3' });                                       // no position: no recovery

        const metrics = await reader.read();
        expect(point(metrics, 'pulse.server.recoveries', { 'pulse.route': '/feed/{id}', 'pulse.recovery.outcome': 'replayed' })).to.equal(1);
        expect(point(metrics, 'pulse.server.recoveries', { 'pulse.route': '/feed/{id}', 'pulse.recovery.outcome': 'not_recoverable' })).to.equal(1);
        expect(metrics.get('pulse.server.recoveries')!.dataPoints).to.have.length(2);
        peer.close();
    });

    it('uses the global MeterProvider an application registered, unless metrics is false', async () => {

        const { reader, provider } = meter();
        registerGlobal(provider);

        const on = await server();
        const off = await server({ metrics: false });
        for (const srv of [on, off]) {
            srv.subscription('/x');
            await srv.start();
            cleanup(() => srv.stop());
        }

        const client = new Nes.Client(url(on));
        await client.connect();
        await client.subscribe('/x', () => { });
        const silent = new Nes.Client(url(off));
        await silent.connect();
        cleanup(() => Promise.all([client.disconnect(), silent.disconnect()]));

        const metrics = await reader.read();
        expect(metrics.get('pulse.server.active_connections')!.dataPoints).to.have.length(1);          // one server
        expect(point(metrics, 'pulse.server.active_connections')).to.equal(1);
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/x' })).to.equal(1);
    });

    it('reports no connections once stopped, and goes on after a restart', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider }, heartbeat: { interval: 50, timeout: 45 } });
        await srv.start();
        const peer = await Peer.open(url(srv));
        await peer.hello();
        let answered = 0;
        peer.ws.on('message', (data) => data.toString() === '{"type":"ping"}' && peer.send({ type: 'ping', id: ++answered }));      // stays alive
        await until(() => answered >= 2);
        const pings = await reader.read();
        expect(point(pings, 'pulse.server.active_connections')).to.equal(1);
        const sent = point<number>(pings, 'pulse.server.sent.messages', { 'pulse.message.type': 'ping' })!;
        expect(sent).to.be.at.least(2);
        expect(point(pings, 'pulse.server.sent.bytes', { 'pulse.message.type': 'ping' })).to.equal(sent * '{"type":"ping"}'.length);

        await srv.stop();
        expect(point(await reader.read(), 'pulse.server.active_connections')).to.equal(0);
        expect(point(await reader.read(), 'pulse.server.received.messages', { 'pulse.message.type': 'hello' })).to.equal(1);

        await srv.start();
        cleanup(() => srv.stop());
        const again = await Peer.open(url(srv));
        await again.hello();
        const metrics = await reader.read();
        expect(metrics.get('pulse.server.active_connections')!.dataPoints).to.have.length(1);          // one series, not one per start
        expect(point(metrics, 'pulse.server.active_connections')).to.equal(1);
        expect(point(metrics, 'pulse.server.received.messages', { 'pulse.message.type': 'hello' })).to.equal(2);
        again.close();
    });

    it('carries the publish time in the envelope only while metrics are exported', async () => {

        for (const exported of [false, true]) {
            const envelopes: Pulse.PublishEnvelope[] = [];
            const broker = new Pulse.MemoryBroker();
            const publish = broker.publish.bind(broker);
            broker.publish = (envelope, history) => {

                envelopes.push({ ...envelope });
                return publish(envelope, history);
            };

            const srv = await server(exported ? { broker, metrics: { meterProvider: meter().provider } } : { broker });
            srv.subscription('/x');
            await srv.start();
            cleanup(() => srv.stop());
            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: ['/x'] });
            const before = Date.now();
            await srv.publish('/x', 1);
            const after = Date.now();
            expect(await peer.next()).to.equal({ type: 'pub', path: '/x', message: 1 });
            if (exported) {
                expect(envelopes[0]!.at!).to.be.within(before, after);
                expect(envelopes[0]).to.equal({ path: '/x', message: 1, at: envelopes[0]!.at });
            }
            else {
                expect(envelopes).to.equal([{ path: '/x', message: 1 }]);
            }

            peer.close();
        }
    });

    it('works without @opentelemetry/api installed (metrics off, whatever provider is registered)', async () => {

        const { reader, provider } = meter();
        registerGlobal(provider);

        // Resolving the package fails as it does when it is not installed; the module loaded so far is set aside.
        const Module = require('node:module');
        const resolve = Module._resolveFilename;
        const path = require.resolve('@opentelemetry/api');
        const cached = require.cache[path];
        delete require.cache[path];
        Module._resolveFilename = function (request: string, ...rest: unknown[]) {

            if (request === '@opentelemetry/api') {
                throw Object.assign(new Error(`Cannot find module '${request}'`), { code: 'MODULE_NOT_FOUND' });
            }

            return resolve.call(this, request, ...rest);
        };

        cleanup(() => {

            Module._resolveFilename = resolve;
            require.cache[path] = cached;
        });

        const srv = await server();
        srv.subscription('/x');
        await srv.start();
        cleanup(() => srv.stop());
        const client = new Nes.Client(url(srv));
        await client.connect();
        await client.subscribe('/x', () => { });
        cleanup(() => client.disconnect());
        await srv.publish('/x', 'still works');
        expect(srv.pulseStats().subscriptions).to.equal(1);
        expect((await reader.read()).size).to.equal(0);
    });

    it('counts the members of presence paths through this node by route, up on join and down on leave', async () => {

        const { reader, provider } = meter();
        const srv = await server({ metrics: { meterProvider: provider }, auth: { type: 'direct', route: { strategy: 'json', mode: 'optional' } } }, 'pulse', jsonAuth);
        srv.subscription('/room/{id}', { presence: { interval: 10 } });
        srv.subscription('/news');
        await srv.start();
        cleanup(() => srv.stop());
        const members = async (): Promise<number | undefined> => point(await reader.read(), 'pulse.presence.members', { 'pulse.route': '/room/{id}' });

        expect(await members()).to.not.exist();                                 // no presence path joined yet
        const john = await member(srv, 'john', ['/room/1', '/news']);
        expect(await members()).to.equal(1);
        const john2 = await member(srv, 'john', ['/room/1']);                   // a user counts once per path
        expect(await members()).to.equal(1);
        const jane = await member(srv, 'jane', ['/room/2']);
        expect(await members()).to.equal(2);
        const jim = await member(srv, 'jim', ['/room/1', '/room/2']);           // a member of two paths: one per path
        expect(await members()).to.equal(4);
        const anonymous = await member(srv, undefined, ['/room/1']);            // anonymous sockets are not members
        await settled(srv, '/room/1', 2, 1);
        const follower = await member(srv, 'joe', [Pulse.presencePath('/room/1')]);   // nor are followers
        await until(() => follower.frames.length === 2);                        // hello, then the list
        expect(JSON.parse(follower.frames[1]!).message).to.include({ presence: 'list', anonymous: 1 });
        expect(JSON.parse(follower.frames[1]!).message.members).to.have.length(2);

        let metrics = await reader.read();
        expect(point(metrics, 'pulse.presence.members', { 'pulse.route': '/room/{id}' })).to.equal(4);
        expect(metrics.get('pulse.presence.members')!.dataPoints).to.have.length(1);       // the route only: no path, no user, no /news
        expect(metrics.get('pulse.presence.members')!.descriptor.unit).to.equal('{member}');
        expect(metrics.get('pulse.presence.members')).to.include({ dataPointType: DataPointType.SUM, isMonotonic: false });      // an up-down count
        expect(point(metrics, 'pulse.server.active_subscriptions', { 'pulse.route': '/room/{id}' })).to.equal(6);

        // Leaving: the last socket of a user on a path takes the user away
        expect((await jim.request({ type: 'unsub', id: 2, path: '/room/2' })).statusCode).to.not.exist();
        expect(await members()).to.equal(3);
        john.close();
        await until(() => srv.pulseStats().sockets === 5);
        expect(await members()).to.equal(3);                                    // john is still on /room/1 through john2
        john2.close();
        jane.close();
        await until(() => srv.pulseStats().sockets === 3);
        expect(await members()).to.equal(1);
        jim.close();
        await until(() => srv.pulseStats().sockets === 2);
        expect(await members()).to.equal(0);                                    // none left: 0, not the last value

        anonymous.close();
        await until(() => srv.pulseStats().sockets === 1);
        const rejoined = await member(srv, 'jane', ['/room/3']);
        expect(await members()).to.equal(1);
        await srv.stop();
        expect(await members()).to.equal(0);                                    // a stopped server has none
        rejoined.close();
        follower.close();
    });

    describe('with Redis', { skip: skipWithoutRedis('metrics across two nodes') }, () => {

        it('counts each node\'s own presence members, not the cluster view it replicates', async () => {

            const prefix = `pulse-test-metrics-presence-${process.pid}-${Date.now()}:`;
            const nodes = [meter(), meter()];
            const servers: Hapi.Server[] = [];
            for (const { provider } of nodes) {
                const srv = await server({ broker: new RedisBroker({ url: redisUrl, prefix }), metrics: { meterProvider: provider }, auth: { type: 'direct', route: { strategy: 'json', mode: 'optional' } } }, 'pulse', jsonAuth);
                srv.subscription('/room/{id}', { presence: { interval: 10 } });
                await srv.start();
                cleanup(() => srv.stop());
                servers.push(srv);
            }

            const [a, b] = servers as [Hapi.Server, Hapi.Server];
            const peers = [await member(a, 'john', ['/room/1']), await member(b, 'john', ['/room/1']), await member(b, 'jane', ['/room/1'])];
            await settled(a, '/room/1', 2);
            const follower = await member(a, 'joe', [Pulse.presencePath('/room/1')]);          // node A holds a replica of both members
            await until(() => follower.frames.length === 2);
            expect(JSON.parse(follower.frames[1]!).message.members).to.have.length(2);

            const members = async (node: number) => point(await nodes[node]!.reader.read(), 'pulse.presence.members', { 'pulse.route': '/room/{id}' });
            expect(await members(0)).to.equal(1);                               // john, through A
            expect(await members(1)).to.equal(2);                               // john and jane, through B: a sum over nodes counts john twice

            peers[1]!.close();
            await until(() => b.pulseStats().sockets === 1);
            expect(await members(1)).to.equal(1);
            expect(await members(0)).to.equal(1);
            for (const peer of [peers[0]!, peers[2]!, follower]) {
                peer.close();
            }
        });

        it('measures the delivery lag on another node from the publish time in the envelope', async () => {

            const prefix = `pulse-test-metrics-${process.pid}-${Date.now()}:`;
            const nodes = [meter(), meter()];
            const servers = [];
            for (const provider of [nodes[0]!.provider, nodes[1]!.provider, null]) {
                const srv = await server({ broker: new RedisBroker({ url: redisUrl, prefix }), metrics: provider ? { meterProvider: provider } : false });
                srv.subscription('/room/{id}');
                await srv.start();
                cleanup(() => srv.stop());
                servers.push(srv);
            }

            const peer = await Peer.open(url(servers[1]!));
            await peer.hello({ subs: ['/room/1'] });
            await servers[0]!.publish('/room/1', 'hi');
            await servers[2]!.publish('/room/1', 'from a node without metrics: no publish time');
            await peer.next();
            await peer.next();

            const receiving = await nodes[1]!.reader.read();
            expect(histogram(receiving, 'pulse.server.delivery.recipients', { 'pulse.route': '/room/{id}' })!.count).to.equal(2);
            const lag = histogram(receiving, 'pulse.broker.delivery.lag', { 'pulse.route': '/room/{id}' })!;
            expect(lag.count).to.equal(1);
            expect(lag.max!).to.be.below(5);
            expect(point(receiving, 'pulse.server.publishes', { 'pulse.route': '/room/{id}' })).to.not.exist();
            const publishing = await nodes[0]!.reader.read();
            expect(point(publishing, 'pulse.server.publishes', { 'pulse.route': '/room/{id}' })).to.equal(1);
            expect(histogram(publishing, 'pulse.broker.publish.duration', { 'pulse.route': '/room/{id}' })!.count).to.equal(1);
            peer.close();
        });
    });
});
