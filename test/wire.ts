// Byte-for-byte: the same conversation with a stock @hapi/nes server and with hapi-pulse must produce
// the same frames (apart from socket ids), so a stock nes client cannot tell them apart.

import { randomBytes } from 'node:crypto';

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { RedisBroker } from '../lib/redis';
import { chunk, encode } from '../lib/protocol';
import type { Position } from '../lib/protocol';
import { deleteRedisKeys, Peer, redisAvailable, redisUrl, server, url, until, wait } from './helpers';
import type { Flavour } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const setup = (srv: Hapi.Server): void => {

    srv.route([
        { method: 'GET', path: '/', handler: () => 'hello' },
        { method: 'POST', path: '/echo', options: { id: 'echo', handler: (request) => request.payload } },
        { method: 'GET', path: '/json', handler: (_request, h) => h.response('{"raw":[1,2]}').type('application/json') },
        { method: 'GET', path: '/fail', handler: () => Boom.conflict('Busy', { why: 1 }) },
        { method: 'GET', path: '/empty', handler: (_request, h) => h.response().code(204) }
    ]);
};

// Runs a conversation and returns every frame the server sent, socket ids replaced.
const converse = async (flavour: Flavour, options: Record<string, unknown>, script: (peer: Peer, srv: Hapi.Server) => Promise<void>): Promise<string[]> => {

    const srv = await server(options, flavour, setup);
    srv.subscription('/item/{id}');
    srv.subscription('/plain');
    await srv.start();
    const peer = await Peer.open(url(srv));
    await script(peer, srv);
    peer.close();
    await srv.stop();
    let socketId = '';
    return peer.frames.map((frame) => {

        const match = /"socket":"([^"]+)"/.exec(frame);
        if (match) {
            socketId = match[1]!;
        }

        return socketId ? frame.split(socketId).join('<socket>') : frame;
    });
};

const same = async (options: Record<string, unknown>, script: (peer: Peer, srv: Hapi.Server) => Promise<void>): Promise<string[]> => {

    const nes = await converse('nes', options, script);
    const pulse = await converse('pulse', options, script);
    expect(pulse).to.equal(nes);
    return pulse;
};

describe('wire format', () => {

    it('answers hello, requests and errors exactly as nes', async () => {

        const frames = await same({ headers: ['content-type'] }, async (peer) => {

            await peer.request({ type: 'request', id: 1, method: 'GET', path: '/' });            // before hello
            await peer.hello();
            await peer.request({ type: 'request', id: 2, method: 'GET', path: '/' });
            await peer.request({ type: 'request', id: 3, method: 'POST', path: '/echo', payload: { a: 'b' } });
            await peer.request({ type: 'request', id: 4, method: 'GET', path: 'echo', payload: 'x' });
            await peer.request({ type: 'request', id: 5, method: 'GET', path: '/json' });
            await peer.request({ type: 'request', id: 6, method: 'GET', path: '/fail' });
            await peer.request({ type: 'request', id: 7, method: 'GET', path: '/missing' });
            await peer.request({ type: 'request', id: 8, method: 'GET', path: '/empty' });
            await peer.request({ type: 'request', id: 9, method: 'GET', path: '/', headers: { Authorization: 'x' } });
            await peer.request({ type: 'request', id: 10, path: '/' });
            await peer.request({ type: 'request', id: 11, method: 'GET' });
            await peer.request({ type: 'message', id: 12, message: 'hi' });
            await peer.request({ type: 'other', id: 13 });
            await peer.request({ type: 'request', method: 'GET', path: '/' });
            await peer.request({ id: 14 });
            peer.send('{not json');
            await peer.next();
            await peer.request({ type: 'hello', id: 15, version: '2' });
        });

        expect(frames[0]).to.equal('{"statusCode":400,"payload":{"error":"Bad Request","message":"Connection is not initialized"},"headers":{},"type":"request","id":1}');
        expect(frames[1]).to.equal('{"type":"hello","id":1,"heartbeat":{"interval":15000,"timeout":5000},"socket":"<socket>"}');
        expect(frames[5]).to.equal('{"type":"request","id":5,"statusCode":200,"payload":{"raw":[1,2]},"headers":{"content-type":"application/json; charset=utf-8"}}');
    });

    it('subscribes, publishes, revokes and broadcasts exactly as nes', async () => {

        await same({}, async (peer, srv) => {

            await peer.hello({ subs: ['/item/1'] });
            await peer.request({ type: 'sub', id: 2, path: '/item/2' });
            await peer.request({ type: 'sub', id: 3, path: '/plain' });
            await peer.request({ type: 'sub', id: 4, path: '/nope' });
            await peer.request({ type: 'sub', id: 5, path: '/item/2?x' });
            await srv.publish('/item/2', { n: 2 });
            await peer.next();
            await srv.publish('/plain', [1, 'two', null]);
            await peer.next();
            await srv.publish('/plain', undefined);
            await peer.next();
            await srv.publish('/item/2', 'é'.repeat(100));                    // a two-byte length header
            await peer.next();
            await srv.publish('/item/2', 'x'.repeat(70000));                  // an eight-byte length header
            await peer.next();
            await srv.broadcast({ all: true });
            await peer.next();
            await srv.eachSocket((socket) => socket.revoke('/item/2', { gone: true }));
            await peer.next();
            await srv.eachSocket((socket) => socket.revoke('/item/1', null));
            await peer.next();
            await srv.eachSocket((socket) => socket.send('direct'));
            await peer.next();
            await srv.eachSocket((socket) => socket.publish('/custom', 'x'));
            await peer.next();
            await peer.request({ type: 'unsub', id: 6, path: '/plain' });
            await peer.request({ type: 'unsub', id: 7, path: '/never' });
            await srv.publish('/plain', 'not delivered');
            await peer.request({ type: 'request', id: 8, method: 'GET', path: '/' });
        });
    });

    it('chunks exactly as nes', async () => {

        const run = (flavour: Flavour) => converse(flavour, { payload: { maxChunkChars: 10 } }, async (peer, srv) => {

            peer.send({ type: 'hello', id: 1, version: '2', subs: ['/plain'] });
            await until(() => peer.frames.length > 0 && peer.frames[peer.frames.length - 1]![0] === '!');
            peer.frames.splice(0);                                  // the hello reply holds a socket id split over chunks
            await srv.publish('/plain', 'abcdefghijklmnopqrstuvwxyz');
            await until(() => peer.frames.length > 0 && peer.frames[peer.frames.length - 1]![0] === '!');
        });

        const frames = await run('pulse');
        expect(frames).to.equal(await run('nes'));
        expect(frames).to.equal(['+{"type":"p', '+ub","path"', '+:"/plain",', '+"message":', '+"abcdefghi', '+jklmnopqrs', '!tuvwxyz"}']);
    });

    it('fails hello like nes (then closes the socket)', async () => {

        for (const flavour of ['nes', 'pulse'] as const) {
            const srv = await server({}, flavour);
            await srv.start();
            const peer = await Peer.open(url(srv));
            expect(await peer.request({ type: 'hello', id: 1, version: '1' })).to.equal({ statusCode: 400, payload: { error: 'Bad Request', message: 'Incorrect protocol version (expected 2 but received 1)' }, type: 'hello', id: 1 });
            if (flavour === 'pulse') {
                expect((await peer.closedWith()).code).to.equal(1008);
            }
            else {
                await wait(20);
                expect(peer.closed).to.be.null();                       // nes keeps the failed socket open
            }

            peer.close();
            await srv.stop();
        }
    });

    it('sends pings as nes', async () => {

        // Intervals that leave room for a slow pong, and no third ping before the peer leaves
        await same({ heartbeat: { interval: 400, timeout: 300 } }, async (peer) => {

            await peer.hello();
            await peer.next();
            peer.send({ type: 'ping', id: 2 });
            await peer.next();
        });
    });

    // Publishes skip encode() for speed (server/prepared.ts builds the pub text by hand, once for every recipient):
    // what they send must be what the typed encoding gives.
    it('sends the hand-built pub frames byte for byte as encode() would', async () => {

        const messages: unknown[] = [{ n: 1, text: 'é "quoted" \\ \u2028' }, [1, 'two', null], 'x'.repeat(300), 0, null, undefined, { toJSON: () => 'custom' }];
        const run = async (maxChunkChars: number | false) => {

            const srv = await server({ payload: { maxChunkChars } });
            srv.subscription('/h/{id}', { history: { size: 50 }, filter: (_path, message, { socket }) => (socket.app.override ? { override: { instead: message ?? null } } : true) });
            await srv.start();
            const path = '/h/\u00fc"x';
            await srv.publish(path, 'before anyone listens');                       // the path's history starts its epoch

            const receive = async (pulse?: Record<string, unknown>, override = false): Promise<{ peer: Peer; position: Position | undefined }> => {

                const peer = await Peer.open(url(srv));
                peer.send({ type: 'hello', id: 1, version: '2', subs: [path], ...(pulse ? { pulse } : {}) });
                await until(() => peer.frames.length > 0 && (!maxChunkChars || peer.frames[peer.frames.length - 1]![0] === '!'));
                const hello = JSON.parse(maxChunkChars ? peer.frames.map((frame) => frame.slice(1)).join('') : peer.frames[0]!);
                peer.frames.splice(0);
                await srv.eachSocket((socket) => {

                    socket.app.override = socket.id === hello.socket ? override : socket.app.override;
                });

                return { peer, position: hello.pulse?.positions?.[path] };
            };

            const plain = (await receive()).peer;
            const overridden = (await receive(undefined, true)).peer;
            const { peer: recovering, position } = await receive({ recovery: true });
            return { srv, plain, recovering, overridden, path, start: position! };
        };

        for (const maxChunkChars of [false, 16] as const) {
            const { srv, plain, recovering, overridden, path, start } = await run(maxChunkChars);
            expect(start.offset).to.equal(1);
            const expected = { plain: [] as string[], recovering: [] as string[], overridden: [] as string[] };
            for (let i = 0; i < messages.length; ++i) {
                const message = messages[i];
                await srv.publish(path, message);
                const position: Position = { epoch: start.epoch, offset: start.offset + i + 1 };
                expected.plain.push(encode({ type: 'pub', path, message }));
                expected.recovering.push(encode({ type: 'pub', path, message, position }));
                expected.overridden.push(encode({ type: 'pub', path, message: { instead: message ?? null } }));
            }

            const frames = (list: string[]) => (maxChunkChars ? list.flatMap((text) => chunk(text, maxChunkChars)) : list);
            await until(() => plain.frames.length === frames(expected.plain).length && recovering.frames.length === frames(expected.recovering).length && overridden.frames.length === frames(expected.overridden).length);
            expect(plain.frames).to.equal(frames(expected.plain));
            expect(recovering.frames).to.equal(frames(expected.recovering));
            expect(overridden.frames).to.equal(frames(expected.overridden));
            const text = (peer: Peer) => peer.frames.map((frame) => (maxChunkChars ? frame.slice(1) : frame)).join('');
            expect(text(recovering)).to.include('"position":{"epoch":');
            expect(text(overridden)).to.include('{"instead":');
            expect(text(plain)).to.not.include('"position"');
            plain.close();
            recovering.close();
            overridden.close();
            await srv.stop();
        }
    });

    // Presence lists and diffs are made from infos kept as JSON (server/presence.ts through protocol.presenceJson):
    // what a follower receives must be what encode() gives for the same message, on one node and through Redis.
    describe('presence frames', () => {

        const infos: unknown[] = [{ text: 'é "quoted" \\ \u2028 </script>', n: -1.5e-7 }, [1, 'two', null, { deep: [true] }], 'x'.repeat(300), 0, null, { 10: 'a', b: 'c', 2: 'd' }];
        const path = '/p/\u00fc"x';
        const derived = '/$presence' + path;
        const prefix = `pulse-test:wire:${process.pid}:${randomBytes(4).toString('hex')}:`;

        lab.after(async () => {

            if (!redisAvailable) {
                return;
            }

            await deleteRedisKeys(prefix);
        });

        const node = async (maxChunkChars: number | false, broker?: RedisBroker): Promise<Hapi.Server> => {

            const srv = await server({ payload: { maxChunkChars }, auth: { type: 'direct', route: { strategy: 'user', mode: 'optional' } }, ...(broker ? { broker } : {}) }, 'pulse', (s) => {

                s.auth.scheme('user', () => ({
                    authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

                        if (!request.headers['x-user']) {
                            throw Boom.unauthorized(null, 'User');
                        }

                        return h.authenticated({ credentials: { user: request.headers['x-user'], info: JSON.parse(request.headers['x-info'] as string) } });
                    }
                }) as any);
                s.auth.strategy('user', 'user');
            });

            srv.subscription('/p/{id}', { presence: { info: (credentials) => credentials.info, interval: 10 } });
            await srv.start();
            return srv;
        };

        const run = async (maxChunkChars: number | false, nodes: Hapi.Server[]): Promise<void> => {

            const [a, b] = [nodes[0]!, nodes[nodes.length - 1]!];
            const whole = (peer: Peer): string[] => {

                if (!maxChunkChars) {
                    return peer.frames;
                }

                const messages: string[] = [];
                let text = '';
                for (const frame of peer.frames) {
                    text += frame.slice(1);
                    if (frame[0] === '!') {
                        messages.push(text);
                        text = '';
                    }
                }

                return messages;
            };

            const follower = await Peer.open(url(a));
            follower.send({ type: 'hello', id: 1, version: '2', subs: [derived] });
            await until(() => whole(follower).length === 2);
            const pubs = () => whole(follower).slice(1);
            const expected: string[] = [encode({ type: 'pub', path: derived, message: { presence: 'list', members: [], anonymous: 0 } })];
            const byId = new Map<string, unknown>();
            const members: Peer[] = [];
            const join = async (user: string | null, info: unknown): Promise<void> => {

                const member = await Peer.open(url(b));
                member.send({ type: 'hello', id: 1, version: '2', subs: [path], ...(user ? { auth: { headers: { 'x-user': user, 'x-info': JSON.stringify(info) } } } : {}) });
                members.push(member);
            };

            // One join per diff, so that the id in each is that user's (the only thing taken from the frames)
            for (let i = 0; i < infos.length; ++i) {
                await join(`user${i}`, infos[i]);
                await until(() => pubs().length === expected.length + 1);
                const id = JSON.parse(pubs()[expected.length]!).message.joins[0].id;
                byId.set(id, infos[i]);
                expected.push(encode({ type: 'pub', path: derived, message: { presence: 'diff', joins: [{ id, info: infos[i] }], updates: [], leaves: [], anonymous: 0 } }));
            }

            await join(null, null);
            await until(() => pubs().length === expected.length + 1);
            expected.push(encode({ type: 'pub', path: derived, message: { presence: 'diff', joins: [], updates: [], leaves: [], anonymous: 1 } }));

            const [first, second] = [...byId.keys()];
            const update = { status: 'away', 'quote"d': '\u00e9' };
            expect(await b.presence.update(path, 'user0', update)).to.be.true();
            await until(() => pubs().length === expected.length + 1);
            expected.push(encode({ type: 'pub', path: derived, message: { presence: 'diff', joins: [], updates: [{ id: first!, info: update }], leaves: [], anonymous: 1 } }));
            byId.set(first!, update);

            members[1]!.close();
            await until(() => pubs().length === expected.length + 1);
            expected.push(encode({ type: 'pub', path: derived, message: { presence: 'diff', joins: [], updates: [], leaves: [second!], anonymous: 1 } }));
            byId.delete(second!);

            expect(pubs()).to.equal(expected);

            // A later follower gets the list (in the store's order: the ids are taken from it, the infos are ours)
            const late = await Peer.open(url(a));
            late.send({ type: 'hello', id: 1, version: '2', subs: [derived] });
            await until(() => whole(late).length === 2);
            const listed: { id: string }[] = JSON.parse(whole(late)[1]!).message.members;
            expect(listed.map((member) => member.id).sort()).to.equal([...byId.keys()].sort());
            const list = encode({ type: 'pub', path: derived, message: { presence: 'list', members: listed.map(({ id }) => ({ id, info: byId.get(id) })), anonymous: 1 } });
            expect(whole(late)[1]).to.equal(list);

            if (maxChunkChars) {
                expect(late.frames.slice(-chunk(list, maxChunkChars).length)).to.equal(chunk(list, maxChunkChars));
                expect(follower.frames.slice(-chunk(expected[expected.length - 1]!, maxChunkChars).length)).to.equal(chunk(expected[expected.length - 1]!, maxChunkChars));
            }

            for (const peer of [follower, late, ...members]) {
                peer.close();
            }

            for (const srv of nodes) {
                await srv.stop();
            }
        };

        it('sends presence lists and diffs byte for byte as encode() would, on one node', async () => {

            for (const maxChunkChars of [false, 16] as const) {
                await run(maxChunkChars, [await node(maxChunkChars)]);
            }
        });

        it('sends presence lists and diffs byte for byte as encode() would, between two nodes over Redis', { skip: !redisAvailable, timeout: 20000 }, async () => {

            const broker = () => new RedisBroker({ url: redisUrl, prefix, timeout: 1000 });
            await run(32, [await node(32, broker()), await node(32, broker())]);
        });
    });
});
