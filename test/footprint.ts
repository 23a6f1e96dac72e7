// What keeps an idle socket small: the per-socket map of subscriptions (a Map's behaviour, insertion order
// included, with its first entry inline), identity headers shared between sockets, state made on first use.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import type { IncomingMessage } from 'node:http';

import { PathMap } from '../lib/server/path-map';
import { identityHeaders } from '../lib/server/tunnel';
import { Peer, server, url } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

// Applies the same operations to a PathMap and a Map and compares everything either can be asked.
const same = (paths: PathMap<number>, map: Map<string, number>): void => {

    expect(paths.size).to.equal(map.size);
    expect([...paths]).to.equal([...map]);
    expect([...paths.entries()]).to.equal([...map.entries()]);
    expect([...paths.keys()]).to.equal([...map.keys()]);
    expect([...paths.values()]).to.equal([...map.values()]);
    const seen: Array<[string, number]> = [];
    paths.forEach((value, key, owner) => {

        expect(owner).to.shallow.equal(paths);
        seen.push([key, value]);
    });

    expect(seen).to.equal([...map]);
    for (const key of ['/a', '/b', '/c', '/d']) {
        expect(paths.has(key)).to.equal(map.has(key));
        expect(paths.get(key)).to.equal(map.get(key));
    }
};

describe('PathMap', () => {

    it('behaves as a Map through one entry, several, and back', () => {

        const paths = new PathMap<number>();
        const map = new Map<string, number>();
        const steps: Array<['set', string, number] | ['delete', string]> = [
            ['delete', '/a'],                   // nothing to delete
            ['set', '/a', 1],                   // inline
            ['set', '/a', 2],                   // replaced inline
            ['delete', '/b'],                   // another key, inline
            ['set', '/b', 3],                   // becomes a Map, in insertion order
            ['set', '/c', 4],
            ['set', '/a', 5],                   // replaced, keeps its place
            ['delete', '/d'],
            ['delete', '/a'],
            ['delete', '/b'],
            ['delete', '/c'],                   // empty: inline again
            ['set', '/d', 6],
            ['delete', '/d']
        ];

        same(paths, map);
        for (const step of steps) {
            if (step[0] === 'set') {
                expect(paths.set(step[1], step[2])).to.shallow.equal(paths);
                map.set(step[1], step[2]);
            }
            else {
                expect(paths.delete(step[1])).to.equal(map.delete(step[1]));
            }

            same(paths, map);
        }
    });
});

describe('identity headers', () => {

    const request = (headers: Record<string, string>): IncomingMessage => ({ headers }) as unknown as IncomingMessage;

    it('are one frozen object for every upgrade with the same set, and a copy each with a cookie', () => {

        const first = identityHeaders(request({ host: 'example.com', 'user-agent': 'a', 'x-forwarded-for': '10.0.0.1' }));
        const second = identityHeaders(request({ 'x-forwarded-for': '10.0.0.1', host: 'example.com', accept: '*/*' }));
        expect(first).to.equal({ host: 'example.com', 'x-forwarded-for': '10.0.0.1' });
        expect(second).to.shallow.equal(identityHeaders(request({ 'x-forwarded-for': '10.0.0.1', host: 'example.com' })));
        expect(Object.isFrozen(first)).to.be.true();
        expect(identityHeaders(request({ host: 'example.com', 'x-forwarded-for': '10.0.0.2' }))).to.not.shallow.equal(first);

        const withCookie = identityHeaders(request({ host: 'example.com', cookie: 'a=1' }));
        expect(withCookie).to.equal({ host: 'example.com', cookie: 'a=1' });
        expect(identityHeaders(request({ host: 'example.com', cookie: 'a=1' }))).to.not.shallow.equal(withCookie);
        expect(Object.isFrozen(withCookie)).to.be.false();
    });

    it('keeps at most 256 shared sets', () => {

        const kept = identityHeaders(request({ host: 'kept.example' }));
        for (let i = 0; i < 300; ++i) {
            expect(identityHeaders(request({ host: `host-${i}.example` }))).to.equal({ host: `host-${i}.example` });
        }

        // The table was emptied once full: the same set now gets a new object (still equal).
        const again = identityHeaders(request({ host: 'kept.example' }));
        expect(again).to.equal(kept);
        expect(again).to.not.shallow.equal(kept);
    });
});

describe('socket state made on first use', () => {

    it('gives an unauthenticated socket its nes auth object when asked, without credentials', async () => {

        const seen: unknown[] = [];
        const srv = await server({ onConnection: (socket: any) => void seen.push(socket.auth) });
        await srv.start();
        const peer = await Peer.open(url(srv));
        await peer.hello();
        expect(seen).to.equal([{ isAuthenticated: false, credentials: null, artifacts: null }]);
        await srv.eachSocket((socket) => void seen.push(socket.auth));
        expect(seen[1]).to.shallow.equal(seen[0]);                   // made once, then the same object
        peer.close();
        await srv.stop();
    });
});
