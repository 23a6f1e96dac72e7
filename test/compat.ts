// Compatibility with @hapi/nes 14, walked from its API documentation: every scenario runs against the stock nes
// plugin and client and against hapi-pulse, and the observable results must be the same. Where hapi-pulse differs
// on purpose (README, "Differences from @hapi/nes"), the test shows both results.

import * as Code from '@hapi/code';
import * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import * as Pulse from '../lib/index';
import { Nes } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { afterEach, describe, it } = lab;

type Flavour = 'nes' | 'pulse';
const flavours: Flavour[] = ['nes', 'pulse'];

const cleanups: (() => unknown)[] = [];
afterEach(async () => {

    while (cleanups.length) {
        await cleanups.pop()!();
    }
});

const plugin = (flavour: Flavour) => (flavour === 'nes' ? Nes : Pulse);

// Runs `scenario` once per flavour; resolves with { nes, pulse } observations.
const both = async <T>(scenario: (flavour: Flavour) => Promise<T>): Promise<{ nes: T; pulse: T }> => {

    return { nes: await scenario('nes'), pulse: await scenario('pulse') };
};


describe('Compatibility with @hapi/nes: plugin', () => {

    it('satisfies plugins that declare a dependency on @hapi/nes, with or without a version range', async () => {

        const { nes, pulse } = await both(async (flavour) => {

            const server = Hapi.server();
            cleanups.push(() => server.stop());
            const dependant = (name: string, dependencies: string | Record<string, string>) => ({
                name,
                dependencies,
                register: (srv: Hapi.Server) => srv.dependency('@hapi/nes', async () => srv.subscription('/' + name))
            });

            await server.register(dependant('a', '@hapi/nes'));                 // dependencies are checked at initialize()
            await server.register(plugin(flavour));
            await server.register(dependant('b', { '@hapi/nes': '14.x' }));
            await server.initialize();
            return Object.keys(server.registrations).filter((name) => name !== 'hapi-pulse').sort();
        });

        expect(nes).to.equal(['@hapi/nes', 'a', 'b']);
        expect(pulse).to.equal(nes);
    });

    it('refuses to register beside @hapi/nes', async () => {

        const server = Hapi.server();
        await server.register(Nes);
        await expect(server.register(Pulse)).to.reject();
    });
});
