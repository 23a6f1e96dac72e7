// The in-process broker, the reference: the conformance suite every broker passes (test/broker.ts), then
// what only it has: its history must stay bounded in memory.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { MemoryBroker } from '../lib/index';
import type { PublishEnvelope, Recovery } from '../lib/index';
import { conformance } from './broker';
import { until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

conformance(lab, 'memory', () => new MemoryBroker(), { inProcess: true });

const messages = (recovery: Recovery): unknown[] => {

    expect(recovery.recovered).to.be.true();
    return (recovery as { entries: PublishEnvelope[] }).entries.map((entry) => entry.message);
};

describe('memory broker', () => {

    it('drops the history of paths that expired, without a timer per path', async () => {

        const broker = new MemoryBroker();
        await broker.start({ deliver: () => { }, broadcast: () => { } });

        const long = { size: 5, ttl: 60000 };
        await broker.publish({ path: '/kept', message: 'old' }, long);
        await broker.publish({ path: '/kept', message: 'new' }, long);
        const kept = (await broker.recover('/kept', null, long)).position;
        const waiting = (await broker.recover('/waiting', null, long)).position;         // no publish yet: nothing stored
        expect(waiting.offset).to.equal(0);

        const short = { size: 5, ttl: 20 };
        for (let id = 0; id < 2000; ++id) {
            for (let i = 0; i < 5; ++i) {
                await broker.publish({ path: `/item/${id}`, message: i }, short);
            }
        }

        expect(broker.size).to.equal(2001);
        const { position } = await broker.recover('/item/7', null, short);

        // Used again after its ttl, before any sweep: dropped and started again
        await wait(40);
        const again = await broker.recover('/item/7', position, short);
        expect(again.recovered).to.be.false();
        expect(again.position).to.equal({ epoch: again.position.epoch, offset: 0 });
        expect(again.position.epoch).to.not.equal(position.epoch);
        expect(broker.size).to.equal(2000);

        // Never used again: the sweep drops them (at most a second after the shortest ttl was seen)
        await until(() => broker.size === 1, 3000);
        const fresh: PublishEnvelope = { path: '/item/1', message: 'fresh' };
        await broker.publish(fresh, short);
        expect(fresh.position!.offset).to.equal(1);
        expect(broker.size).to.equal(2);

        // The live paths kept their history through the sweeps
        expect(messages(await broker.recover('/kept', { epoch: kept.epoch, offset: 0 }, long))).to.equal(['old', 'new']);
        const first: PublishEnvelope = { path: '/waiting', message: 'first' };
        await broker.publish(first, long);
        expect(first.position!.offset).to.equal(1);
        expect(messages(await broker.recover('/waiting', waiting, long))).to.equal(['first']);

        await broker.stop();
        await broker.stop();
    });

    it('records a publish to several paths without delivering it once stopped (no sink)', async () => {

        const broker = new MemoryBroker();
        const delivered: string[] = [];
        await broker.start({ deliver: (envelope) => void delivered.push(envelope.path), broadcast: () => { } });
        await broker.stop();

        const history = { size: 5, ttl: 60000 };
        await broker.publishMany(['/a', '/b'].map((path) => ({ envelope: { path, message: 'late' }, history })));
        expect(delivered).to.equal([]);
        expect(messages(await broker.recover('/a', { epoch: broker.epoch, offset: 0 }, history))).to.equal(['late']);
    });

    it('keeps exactly the last `size` entries across compactions', async () => {

        const broker = new MemoryBroker();
        const history = { size: 100, ttl: 50000 };
        const position = { epoch: '', offset: 0 };                                     // not started yet: no sweep timer to advance
        for (let i = 1; i <= 1000; ++i) {
            const envelope: PublishEnvelope = { path: '/many', message: i };
            await broker.publish(envelope, history);
            position.epoch = envelope.position!.epoch;

            if (i % 37 === 0 || i === 1000) {
                const at = { epoch: position.epoch, offset: Math.max(0, i - 100) };
                expect(messages(await broker.recover('/many', at, history))).to.equal(Array.from({ length: i - at.offset }, (_, n) => at.offset + n + 1));
                if (at.offset) {
                    expect((await broker.recover('/many', { epoch: position.epoch, offset: at.offset - 1 }, history)).recovered).to.be.false();
                }
            }
        }

        const current = { epoch: position.epoch, offset: 1000 };
        expect(messages(await broker.recover('/many', { epoch: position.epoch, offset: 990 }, history))).to.equal([991, 992, 993, 994, 995, 996, 997, 998, 999, 1000]);
        expect(await broker.recover('/many', current, history)).to.equal({ recovered: true, entries: [], position: current });
        expect(broker.size).to.equal(1);

        // Started after a shorter ttl than the default sweep period was seen, stopped and started again
        await broker.start({ deliver: () => { }, broadcast: () => { } });
        await broker.stop();
        await broker.start({ deliver: () => { }, broadcast: () => { } });
        await broker.stop();
    });
});
