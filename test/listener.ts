// The listener through the public API: registration options, server.publish / broadcast / eachSocket,
// upgrades while stopping, tunnelled response encoding, heartbeat and recovery edge cases.

import type { IncomingMessage } from 'node:http';
import * as Net from 'node:net';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { CloseCode, MemoryBroker } from '../lib';
import type { BrokerSink, HistoryOptions, PublishEnvelope, Recovery } from '../lib';
import type { Position } from '../lib/protocol';
import { Nes, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const pubs = (peer: Peer): any[] => peer.frames.map((frame) => JSON.parse(frame)).filter((message) => message.type === 'pub');

const basic = (srv: Hapi.Server): void => {

    srv.auth.scheme('user', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const user = request.headers.authorization as string | undefined;
            if (!user) {
                throw Boom.unauthorized(null, 'User');
            }

            return h.authenticated({ credentials: { user } });
        }
    }) as any);
    srv.auth.strategy('user', 'user');
    srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials });
};

// A memory broker whose history read waits for the test, and that lets the test deliver envelopes
// as another node would.
class ControlledBroker extends MemoryBroker {

    target: BrokerSink | null = null;
    gate: Promise<void> | null = null;
    reading = 0;
    readFirst = false;                              // read the history, then wait (a pub can land after the read)
    failures = 0;                                   // history reads still to refuse with a 503, as Redis out of reach
    missed: PublishEnvelope[] | null = null;        // publishes kept in history but not delivered: this node missed them

    override start(sink: BrokerSink): Promise<void> {

        this.target = sink;
        return super.start({ ...sink, deliver: (envelope) => (this.missed ? void this.missed.push(envelope) : sink.deliver(envelope)) });
    }

    override async recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        ++this.reading;
        if (this.failures) {
            --this.failures;
            throw Boom.serverUnavailable('Redis broker unavailable');
        }

        if (this.readFirst) {
            const recovery = await super.recover(path, since, history);
            await this.gate;
            return recovery;
        }

        await this.gate;
        return super.recover(path, since, history);
    }

    deliver(envelope: PublishEnvelope): void {

        this.target!.deliver(envelope);
    }
}

describe('listener', () => {

    describe('registration', () => {

        it('accepts origin as a single string', async () => {

            const srv = await server({ origin: 'https://app.example' });
            await srv.start();

            const good = await Peer.open(url(srv), { headers: { origin: 'https://app.example' } });
            expect((await good.hello()).type).to.equal('hello');
            await expect(Peer.open(url(srv), { headers: { origin: 'https://evil.example' } })).to.reject(/403/);
            good.close();
            await srv.stop();
        });

        for (const type of ['token', 'cookie'] as const) {
            it(`seals ${type}s with a generated password when none is given`, async () => {

                const srv = await server({ auth: { type, route: 'user', isSecure: false } }, 'pulse', basic);
                await srv.start();

                const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'john' } });
                expect(res.statusCode).to.equal(200);
                const peer = type === 'token' ? await Peer.open(url(srv)) : await Peer.open(url(srv), { headers: { cookie: (res.headers['set-cookie'] as string[])[0]!.split(';')[0]! } });
                await peer.hello(type === 'token' ? { auth: (res.result as { token: string }).token } : {});
                expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal({ user: 'john' });
                peer.close();
                await srv.stop();
            });
        }
    });

    describe('server API', () => {

        it('asserts the publish path', async () => {

            const srv = await server();
            expect(() => srv.publish(5 as any, 'x')).to.throw('Missing or invalid subscription path: 5');
            expect(() => srv.publish('', 'x')).to.throw('Missing or invalid subscription path: empty');
            expect(() => srv.publish('relative', 'x')).to.throw('Missing or invalid subscription path: relative');
        });

        it('validates broadcast and eachSocket user filters', async () => {

            const bare = await server({ auth: false });
            expect(() => bare.broadcast('x', { user: 'john' })).to.throw('Socket auth indexing is disabled');

            const srv = await server({ auth: { type: 'direct', route: 'user' } }, 'pulse', basic);
            srv.subscription('/plain');
            srv.subscription('/indexed', { auth: { index: true } });
            await srv.start();

            expect(() => srv.broadcast('x', { user: 'john' })).to.throw('Socket auth indexing is disabled');
            expect(() => srv.eachSocket(() => { }, { user: 'john' })).to.throw('Cannot specify user filter without a subscription path');

            const john = await Peer.open(url(srv));
            await john.hello({ auth: { headers: { authorization: 'john' } }, subs: ['/plain', '/indexed'] });
            const jane = await Peer.open(url(srv));
            await jane.hello({ auth: { headers: { authorization: 'jane' } }, subs: ['/plain', '/indexed'] });

            const seen = (options: { subscription?: string; user?: string }) => async () => {

                const users: string[] = [];
                await srv.eachSocket((socket) => users.push(socket.auth.credentials!.user), options);
                return users.sort();
            };

            expect(await seen({ subscription: '/nowhere' })()).to.equal([]);
            expect(await seen({ subscription: '/plain' })()).to.equal(['jane', 'john']);
            await expect(seen({ subscription: '/plain', user: 'john' })()).to.reject('Subscription auth indexing is disabled');
            expect(await seen({ subscription: '/indexed', user: 'john' })()).to.equal(['john']);
            expect(await seen({ subscription: '/indexed', user: 'nobody' })()).to.equal([]);

            john.close();
            jane.close();
            await srv.stop();
        });

        it('delivers publishes and broadcasts to its own sockets no more once stopping, visits none, and refuses new upgrades with 503', async () => {

            let release!: () => void;
            const released = new Promise<void>((resolve) => {

                release = resolve;
            });

            let entered = false;
            const srv = await server();
            srv.subscription('/news');
            srv.route({ method: 'GET', path: '/slow', handler: async () => {

                entered = true;
                await released;
                return 'done';
            } });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: ['/news'] });
            peer.send({ type: 'request', id: 2, method: 'GET', path: '/slow' });
            await until(() => entered);

            const stopping = srv.stop();                                        // waits for /slow
            await wait(20);
            const visited: string[] = [];
            await srv.publish('/news', 'late');
            await srv.broadcast('late');
            await srv.eachSocket((socket) => visited.push(socket.id));
            await expect(Peer.open(url(srv))).to.reject(/503/);

            release();
            expect(await peer.next()).to.include({ type: 'request', id: 2, statusCode: 200, payload: 'done' });
            await stopping;
            expect((await peer.closedWith()).code).to.equal(CloseCode.goingAway);
            expect(visited).to.equal([]);
            expect(peer.frames.filter((frame) => frame.includes('late'))).to.equal([]);
        });

        it('resolves publishes and broadcasts before the first start (nothing can listen yet), refuses them once stopped', async () => {

            const srv = await server();
            srv.subscription('/news');
            await srv.publish('/news', 'early');
            await srv.broadcast('early');

            await srv.start();
            await srv.stop();
            await expect(srv.publish('/news', 'late')).to.reject('Server stopped');
            await expect(srv.broadcast('late')).to.reject('Server stopped');
        });

        it('logs a broker that fails to unsubscribe', async () => {

            class FailingBroker extends MemoryBroker {

                override unsubscribe(): Promise<void> {

                    return Promise.reject(new Error('broker down'));
                }
            }

            const srv = await server({ broker: new FailingBroker() });
            const logs: { tags: string[]; error?: Error }[] = [];
            srv.events.on('log', (event) => logs.push({ tags: event.tags, error: event.error as Error }));
            srv.subscription('/news');
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: ['/news'] });
            expect(await peer.request({ type: 'unsub', id: 2, path: '/news' })).to.equal({ type: 'unsub', id: 2 });
            await until(() => logs.length > 0);
            expect(logs[0]!.tags).to.equal(['pulse', 'broker', 'error']);
            expect(logs[0]!.error!.message).to.equal('broker down');
            peer.close();
            await srv.stop();
        });
    });

    describe('upgrades', () => {

        it('drops an upgrade whose client left while onUpgrade ran', async () => {

            let calls = 0;
            let connections = 0;
            const srv = await server({
                onUpgrade: async (request: IncomingMessage) => {

                    if (++calls === 1) {
                        await until(() => request.socket.destroyed, 5000, 'the client to leave');
                    }

                    return true;
                },
                onConnection: () => {

                    ++connections;
                }
            });
            await srv.start();

            const raw = Net.connect(srv.info.port as number, '127.0.0.1');
            raw.on('error', () => { });
            raw.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${'a'.repeat(22)}==\r\n\r\n`);
            await until(() => calls === 1);
            expect(srv.pulseStats().pendingUpgrades).to.equal(1);
            raw.resetAndDestroy();                                              // gives up mid-upgrade

            await until(() => srv.pulseStats().pendingUpgrades === 0);
            await wait(50);
            expect(srv.pulseStats().sockets).to.equal(0);
            expect(connections).to.equal(0);

            const peer = await Peer.open(url(srv));                             // the next one is served
            expect((await peer.hello()).type).to.equal('hello');
            expect(connections).to.equal(1);
            peer.close();
            await srv.stop();
        });
    });

    describe('tunnelled responses', () => {

        it('passes JSON text through as the payload, with or without a headers filter', async () => {

            for (const headers of [null, ['content-type']]) {
                const srv = await server({ headers });
                srv.route({ method: 'GET', path: '/json', handler: (_request, h) => h.response('{"a":[1,2]}').type('application/json') });
                await srv.start();

                const peer = await Peer.open(url(srv));
                await peer.hello();
                await peer.request({ type: 'request', id: 2, method: 'GET', path: '/json' });
                expect(peer.frames[1]).to.equal(headers ?
                    '{"type":"request","id":2,"statusCode":200,"payload":{"a":[1,2]},"headers":{"content-type":"application/json; charset=utf-8"}}' :
                    '{"type":"request","id":2,"statusCode":200,"payload":{"a":[1,2]}}');
                peer.close();
                await srv.stop();
            }
        });

        it('answers 500 when a result cannot be serialized', async () => {

            const srv = await server();
            const logs: string[][] = [];
            srv.events.on('log', (event) => logs.push(event.tags));
            srv.route({
                method: 'GET',
                path: '/big',
                options: {
                    json: { replacer: (_key: string, value: unknown) => (typeof value === 'bigint' ? value.toString() : value) },
                    handler: () => ({ n: 10n })
                }
            });
            await srv.start();

            expect((await srv.inject('/big')).payload).to.equal('{"n":"10"}');      // hapi itself can
            const peer = await Peer.open(url(srv));
            await peer.hello();
            const reply = await peer.request({ type: 'request', id: 2, method: 'GET', path: '/big' });
            expect(reply).to.include({ type: 'request', id: 2, statusCode: 500 });
            expect(logs).to.equal([['pulse', 'serialization', 'error']]);
            expect((await peer.request({ type: 'request', id: 3, method: 'GET', path: '/nothing' })).statusCode).to.equal(404);     // still serving
            peer.close();
            await srv.stop();
        });
    });

    describe('heartbeat', () => {

        // Peers that answer every ping as the nes client does and count them; `silent` stops one answering.
        // `apart` ms between connections puts them in different slices of the interval.
        const answering = async (srv: Hapi.Server, count: number, apart = 0): Promise<Array<{ peer: Peer; pings: number[]; silent: boolean }>> => {

            const peers = [];
            let id = 100;
            for (let i = 0; i < count; ++i) {
                await wait(i ? apart : 0);
                const entry = { peer: await Peer.open(url(srv)), pings: [] as number[], silent: false };
                entry.peer.ws.on('message', (data) => {

                    const message = JSON.parse(data.toString());
                    if (message.type === 'ping' && message.statusCode === undefined) {
                        entry.pings.push(performance.now());
                        if (!entry.silent) {
                            entry.peer.send({ type: 'ping', id: ++id });
                        }
                    }
                });

                await entry.peer.hello();
                peers.push(entry);
            }

            return peers;
        };

        it('pings every socket once per interval, the sockets spread over the interval', async () => {

            const srv = await server({ heartbeat: { interval: 400, timeout: 200 } });
            await srv.start();
            const joined = performance.now();
            const peers = await answering(srv, 5, 60);
            await until(() => peers.every((entry) => entry.pings.length >= 1), 5000, 'a ping each');
            expect(peers[0]!.pings[0]! - joined).to.be.at.least(400 - 50 - 5);       // not before its hello: about an interval after joining

            const base = peers.map((entry) => entry.pings.length);
            await until(() => peers.every((entry, i) => entry.pings.length - base[i]! >= 3), 8000, 'three more pings each');
            const counts = peers.map((entry, i) => entry.pings.length - base[i]!);
            expect(Math.max(...counts) - Math.min(...counts)).to.be.at.most(1);      // none pinged twice in a round
            expect(peers.every((entry) => entry.peer.closed === null)).to.be.true();

            // Sockets that joined 60 ms apart sit in different slices of the interval (50 ms each): one round's pings
            // span several slices instead of going out in one pass.
            const firsts = peers.map((entry) => entry.pings[0]!);
            expect(Math.max(...firsts) - Math.min(...firsts)).to.be.at.least(100);
            await srv.stop();
        });

        it('closes a socket that stops answering within interval + timeout + one slice', async () => {

            const interval = 300;
            const timeout = 100;
            const srv = await server({ heartbeat: { interval, timeout } });
            await srv.start();
            const [quiet, kept] = await answering(srv, 2);
            await until(() => quiet!.pings.length >= 1, 3000, 'a first ping');
            quiet!.silent = true;
            const silentAt = performance.now();
            expect((await quiet!.peer.closedWith(3000)).code).to.equal(CloseCode.heartbeatTimeout);
            expect(performance.now() - silentAt).to.be.below(interval + timeout + 50 + 400);    // + slack for a loaded machine
            expect(performance.now() - quiet!.pings[quiet!.pings.length - 1]!).to.be.at.least(timeout - 20);
            expect(kept!.peer.closed).to.be.null();
            await srv.stop();
        });

        it('does not time out a socket whose request is still in flight', async () => {

            let pings = 0;
            let answering = true;
            const srv = await server({ heartbeat: { interval: 400, timeout: 300 } });
            srv.route({ method: 'GET', path: '/slow', handler: async () => {

                answering = false;                                               // from now on the peer never answers a ping
                const from = pings;
                await until(() => pings >= from + 3, 5000, 'several sweeps');
                return 'done';
            } });
            await srv.start();

            const peer = await Peer.open(url(srv));
            peer.ws.on('message', (data) => {

                if (JSON.parse(data.toString()).type === 'ping') {
                    ++pings;
                    if (answering) {
                        peer.send({ type: 'ping' });
                    }
                }
            });

            await peer.hello();
            const reply = await peer.reply({ type: 'request', id: 2, method: 'GET', path: '/slow' }, 8000);
            expect(reply).to.include({ statusCode: 200, payload: 'done' });      // several sweeps went by meanwhile
            expect((await peer.closedWith(3000)).code).to.equal(CloseCode.heartbeatTimeout);
            await srv.stop();
        });
    });

    describe('recovery', () => {

        it('chunks positioned pubs for recovery sockets', async () => {

            const srv = await server({ payload: { maxChunkChars: 300 } });
            srv.subscription('/feed', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/plain');
            await srv.start();

            const recovering = await Peer.open(url(srv));
            await recovering.hello({ pulse: { recovery: true } });
            await recovering.request({ type: 'sub', id: 2, path: '/feed' });
            const plain = await Peer.open(url(srv));
            await plain.hello();
            await plain.request({ type: 'sub', id: 2, path: '/feed' });

            const long = 'x'.repeat(400);
            await srv.publish('/feed', 'a');
            await srv.publish('/feed', long);
            await recovering.count(5);
            await plain.count(5);
            const { epoch } = JSON.parse(recovering.frames[2]!).position;        // the history starts with the first publish

            const positioned = JSON.stringify({ type: 'pub', path: '/feed', message: long, position: { epoch, offset: 2 } });
            expect(JSON.parse(recovering.frames[2]!)).to.equal({ type: 'pub', path: '/feed', message: 'a', position: { epoch, offset: 1 } });
            expect(recovering.frames.slice(3)).to.equal(['+' + positioned.slice(0, 300), '!' + positioned.slice(300)]);
            const bare = JSON.stringify({ type: 'pub', path: '/feed', message: long });
            expect(JSON.parse(plain.frames[2]!)).to.equal({ type: 'pub', path: '/feed', message: 'a' });
            expect(plain.frames.slice(3)).to.equal(['+' + bare.slice(0, 300), '!' + bare.slice(300)]);

            await recovering.reply({ type: 'sub', id: 3, path: '/plain' });          // no history: no position to send
            await srv.publish('/plain', long);
            await recovering.count(8);
            const unpositioned = JSON.stringify({ type: 'pub', path: '/plain', message: long });
            expect(recovering.frames.slice(6)).to.equal(['+' + unpositioned.slice(0, 300), '!' + unpositioned.slice(300)]);

            recovering.close();
            plain.close();
            await srv.stop();
        });

        it('delivers a live pub that arrived while the history was read, once', async () => {

            const broker = new ControlledBroker();
            const srv = await server({ broker });
            srv.subscription('/feed', { history: { size: 10, ttl: 60000 } });
            await srv.start();

            let open!: () => void;
            broker.gate = new Promise((resolve) => {

                open = resolve;
            });

            // A fresh subscription starts at the position read for its reply: a pub held meanwhile came before it
            const fresh = await Peer.open(url(srv));
            await fresh.hello({ pulse: { recovery: true } });
            fresh.send({ type: 'sub', id: 2, path: '/feed' });
            await until(() => broker.reading === 1);
            await srv.publish('/feed', 'during');
            open();
            const sub = await fresh.next();
            expect(sub.pulse.position.offset).to.equal(1);
            await srv.publish('/feed', 'next');
            await until(() => pubs(fresh).length === 1);
            expect(pubs(fresh)[0]).to.include({ message: 'next', position: { epoch: broker.epoch, offset: 2 } });

            // A resubscription from offset 2: the pub read from history and held live goes out once.
            broker.gate = new Promise((resolve) => {

                open = resolve;
            });

            await srv.publish('/feed', 'missed');
            const back = await Peer.open(url(srv));
            back.send({ type: 'hello', id: 1, version: '2', subs: ['/feed'], pulse: { recovery: true, positions: { '/feed': { epoch: broker.epoch, offset: 2 } } } });
            await until(() => broker.reading === 2);
            await srv.publish('/feed', 'both');
            open();
            const hello = await back.next();
            expect(hello.pulse.recovered).to.equal({ '/feed': true });
            await srv.publish('/feed', 'after');
            await until(() => pubs(back).length === 3);
            await wait(20);
            expect(pubs(back).map((pub) => pub.message)).to.equal(['missed', 'both', 'after']);

            // A pub that lands after the history was read is simply the next one.
            broker.readFirst = true;
            broker.gate = new Promise((resolve) => {

                open = resolve;
            });

            const late = await Peer.open(url(srv));
            await late.hello({ pulse: { recovery: true } });
            late.send({ type: 'sub', id: 2, path: '/feed' });
            await until(() => broker.reading === 3);
            await srv.publish('/feed', 'landed');
            open();
            expect((await late.next()).pulse.position.offset).to.equal(5);
            await until(() => pubs(late).length === 1);
            await wait(20);
            expect(pubs(late)).to.equal([{ type: 'pub', path: '/feed', message: 'landed', position: { epoch: broker.epoch, offset: 6 } }]);

            fresh.close();
            back.close();
            late.close();
            await srv.stop();
        });

        it('cleans up when a socket leaves while its history is read', async () => {

            const broker = new ControlledBroker();
            const srv = await server({ broker });
            srv.subscription('/feed', { history: { size: 10, ttl: 60000 } });
            await srv.start();

            let open!: () => void;
            broker.gate = new Promise((resolve) => {

                open = resolve;
            });

            const peer = await Peer.open(url(srv));
            await peer.hello({ pulse: { recovery: true } });
            peer.send({ type: 'sub', id: 2, path: '/feed' });
            await until(() => broker.reading === 1);
            peer.ws.terminate();
            await until(() => srv.pulseStats().sockets === 0);
            open();
            await wait(20);
            expect(srv.pulseStats()).to.include({ topics: 0, subscriptions: 0 });

            broker.gate = null;                                                  // the path still works
            const next = await Peer.open(url(srv));
            await next.hello({ subs: ['/feed'], pulse: { recovery: true } });
            await srv.publish('/feed', 'x');
            await until(() => pubs(next).length === 1);
            next.close();
            await srv.stop();
        });

        it('releases held paths when a history subscription fails', async () => {

            const srv = await server();
            srv.subscription('/feed', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/closed', {
                history: { size: 10, ttl: 60000 }, onSubscribe: () => {

                    throw Boom.forbidden('Closed');
                }
            });
            await srv.start();

            // In hello: the error names the failing path and the connection ends.
            const peer = await Peer.open(url(srv));
            const reply = await peer.hello({ subs: ['/feed', '/closed'], pulse: { recovery: true } });
            expect(reply).to.include({ type: 'hello', statusCode: 403, path: '/closed' });
            expect((await peer.closedWith()).code).to.equal(CloseCode.policyViolation);

            // In a sub: the socket keeps its other paths, live.
            const other = await Peer.open(url(srv));
            await other.hello({ subs: ['/feed'], pulse: { recovery: true } });
            expect(await other.request({ type: 'sub', id: 2, path: '/closed' })).to.include({ type: 'sub', id: 2, statusCode: 403 });
            await srv.publish('/closed', 'no');
            await srv.publish('/feed', 'yes');
            await until(() => pubs(other).length === 1);
            expect(pubs(other)[0].message).to.equal('yes');

            other.close();
            await srv.stop();
        });

        it('drops stale copies per path until a newer pub or another epoch goes by', async () => {

            const broker = new ControlledBroker();
            const srv = await server({ broker });
            srv.subscription('/a', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/b', { history: { size: 10, ttl: 60000 } });
            srv.subscription('/plain');
            await srv.start();

            await srv.publish('/a', 'a1');
            await srv.publish('/b', 'b1');
            const peer = await Peer.open(url(srv));
            const epoch = broker.epoch;
            await peer.hello({ subs: ['/a', '/b', '/plain'], pulse: { recovery: true, positions: { '/a': { epoch, offset: 0 }, '/b': { epoch, offset: 0 } } } });
            await until(() => pubs(peer).length === 2);                         // a1 and b1 replayed: floors at offset 1 on both

            const stale = (path: string, message: string, position: Position) => broker.deliver({ path, message, position });
            stale('/a', 'a1 again', { epoch, offset: 1 });                       // dropped
            await srv.publish('/plain', 'p');                                    // no floor on /plain
            await srv.publish('/a', 'a2');                                       // newer: /a's floor goes, /b's stays
            stale('/b', 'b1 again', { epoch, offset: 1 });                       // dropped
            stale('/b', 'b from elsewhere', { epoch: 'another', offset: 1 });    // another epoch: delivered, floor gone
            stale('/b', 'b1 once more', { epoch, offset: 1 });                   // no floor any more: delivered
            await until(() => pubs(peer).length === 6);
            await wait(20);
            expect(pubs(peer).map((pub) => pub.message)).to.equal(['a1', 'b1', 'p', 'a2', 'b from elsewhere', 'b1 once more']);

            peer.close();
            await srv.stop();
        });
    });
});

describe('broker gaps', () => {

    it('leaves nothing behind when a sub fails, so that a repeated sub is handled like a first one', async () => {

        const broker = new ControlledBroker();
        const srv = await server({ broker });
        srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ pulse: { recovery: true } });
        broker.failures = 1;
        const failed = await peer.reply({ type: 'sub', id: 2, path: '/h' });
        expect(failed).to.equal({ statusCode: 503, payload: { error: 'Service Unavailable', message: 'Redis broker unavailable' }, type: 'sub', id: 2 });
        expect(srv.pulseStats()).to.include({ topics: 0, subscriptions: 0 });

        await srv.publish('/h', 'not subscribed');
        const again = await peer.reply({ type: 'sub', id: 3, path: '/h' });
        expect(again.pulse.position.offset).to.equal(1);
        await srv.publish('/h', 'subscribed');
        await until(() => pubs(peer).length === 1);
        await wait(20);
        expect(pubs(peer).map((pub) => pub.message)).to.equal(['subscribed']);

        peer.close();
        await srv.stop();
    });

    it('never sends a socket what was published before it subscribed, when the node delivers it late (healing)', async () => {

        const broker = new ControlledBroker();
        const srv = await server({ broker });
        srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
        await srv.start();

        const early = [await Peer.open(url(srv)), await Peer.open(url(srv))];
        await early[0]!.hello({ subs: ['/h'] });
        await early[1]!.hello({ subs: ['/h'], pulse: { recovery: true } });
        await srv.publish('/h', 1);

        // The node misses 2 and 3 (its broker subscription is down); sockets join meanwhile
        broker.missed = [];
        await srv.publish('/h', 2);
        await srv.publish('/h', 3);
        const late = [await Peer.open(url(srv)), await Peer.open(url(srv)), await Peer.open(url(srv))];
        await late[0]!.hello({ subs: ['/h'] });
        await late[1]!.hello({ subs: ['/h'], pulse: { recovery: true } });
        await late[2]!.hello();
        await late[2]!.reply({ type: 'sub', id: 2, path: '/h' });

        // The broker heals: what the node missed goes to the sockets that were there before, then live again
        const missed = broker.missed;
        broker.missed = null;
        for (const envelope of missed) {
            broker.deliver(envelope);
        }

        await srv.publish('/h', 4);
        for (const peer of [...early, ...late]) {
            await until(() => pubs(peer).some((pub) => pub.message === 4));
        }

        await wait(20);
        for (const peer of early) {
            expect(pubs(peer).map((pub) => pub.message)).to.equal([1, 2, 3, 4]);
        }

        for (const peer of late) {
            expect(pubs(peer).map((pub) => pub.message)).to.equal([4]);
        }

        for (const peer of [...early, ...late]) {
            peer.close();
        }

        await srv.stop();
    });

    it('answers a hello whose subscription fails for now, without it, then closes 1013 so that any client retries', async () => {

        const broker = new ControlledBroker();
        const srv = await server({ broker });
        srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
        srv.subscription('/plain');
        await srv.start();

        broker.failures = 1;
        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ subs: ['/plain', '/h'] });
        expect(hello.type).to.equal('hello');
        expect(await peer.closedWith()).to.equal({ code: 1013, reason: 'Subscription unavailable: try again later' });
        await until(() => srv.pulseStats().sockets === 0);
        expect(srv.pulseStats()).to.include({ topics: 0, subscriptions: 0 });

        // The stock nes client keeps the path and reconnects
        broker.failures = 2;
        const nes = new Nes.Client(url(srv));
        const got: unknown[] = [];
        await nes.subscribe('/h', (message: unknown) => got.push(message));
        let connects = 0;
        nes.onConnect = () => ++connects;
        await nes.connect({ delay: 10 });
        await until(() => connects === 3 && srv.pulseStats().subscriptions === 1);
        await srv.publish('/h', 'after');
        await until(() => got.length === 1);
        expect(got).to.equal(['after']);
        expect(nes.subscriptions()).to.equal(['/h']);

        await nes.disconnect();
        await srv.stop();
    });

    it('sends recovery sockets of a path the broker could not replay to reconnect (4005), and leaves the others', async () => {

        const broker = new ControlledBroker();
        const srv = await server({ broker });
        srv.subscription('/h', { history: { size: 10, ttl: 60000 } });
        srv.subscription('/other', { history: { size: 10, ttl: 60000 } });
        await srv.start();

        const tracking = await Peer.open(url(srv));
        await tracking.hello({ subs: ['/h'], pulse: { recovery: true } });
        const elsewhere = await Peer.open(url(srv));
        await elsewhere.hello({ subs: ['/other'], pulse: { recovery: true } });
        const plain = await Peer.open(url(srv));
        await plain.hello({ subs: ['/h'] });

        broker.target!.lost!('/h');
        broker.target!.lost!('/nobody');
        expect(await tracking.closedWith()).to.equal({ code: 4005, reason: 'Missed publishes: reconnect to recover' });
        await wait(20);
        expect(elsewhere.closed).to.be.null();
        expect(plain.closed).to.be.null();

        elsewhere.close();
        plain.close();
        await srv.stop();
    });
});
