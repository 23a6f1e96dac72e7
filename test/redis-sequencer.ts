// The Redis broker's delivery of history paths (lib/brokers/redis/sequencer.ts) without Redis: the read of
// what a path missed is a history kept here, which answers like the broker's script (test/redis-broker.ts
// runs that script on a real Redis) and can be held, or made to fail, at will.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import type { PublishEnvelope } from '../lib/index';
import type { Position } from '../lib/protocol';
import type { Missed } from '../lib/brokers/redis/scripts';
import { Sequencer } from '../lib/brokers/redis/sequencer';
import { recorder } from './broker';
import type { Recorder } from './broker';
import { until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

// The histories of some paths: an epoch per incarnation, offsets from 1.
class History {

    reads = 0;
    fail = false;
    private gate: Promise<void> = Promise.resolve();
    private opened = (): void => { };
    private epochs = 0;
    private readonly paths = new Map<string, { epoch: string; offset: number; entries: PublishEnvelope[] }>();

    // A publish: kept, and returned as it travels on the channel.
    append(path: string, message: unknown): PublishEnvelope {

        const kept = this.paths.get(path) ?? { epoch: `e${++this.epochs}`, offset: 0, entries: [] };
        this.paths.set(path, kept);
        const envelope = { path, message, position: { epoch: kept.epoch, offset: ++kept.offset } };
        kept.entries.push(envelope);
        return envelope;
    }

    // The history of a path expired: the next publish starts another epoch.
    forget(path: string): void {

        this.paths.delete(path);
    }

    // Reads wait until open().
    close(): void {

        this.gate = new Promise((resolve) => {

            this.opened = resolve;
        });
    }

    open(): void {

        this.opened();
    }

    readonly read = async (path: string, since: Position): Promise<Missed> => {

        ++this.reads;
        await this.gate;
        if (this.fail) {
            throw new Error('unreachable');
        }

        const kept = this.paths.get(path);
        if (!kept) {
            return { epoch: '', offset: 0, entries: [] };
        }

        const after = kept.epoch === since.epoch ? since.offset : 0;
        return { epoch: kept.epoch, offset: kept.offset, entries: kept.entries.filter((entry) => entry.position!.offset > after) };
    };
}

const setup = (timeout = 5000): { history: History; sink: Recorder; sequencer: Sequencer; messages: () => unknown[]; gaps: () => { tags: string[]; data: unknown }[] } => {

    const history = new History();
    const sink = recorder();
    const sequencer = new Sequencer({ read: history.read, deliver: (envelope) => sink.deliver(envelope), log: sink.log, lost: sink.lost }, timeout);
    const messages = () => sink.delivered.map((envelope) => envelope.message);
    const gaps = () => sink.logs.filter((log) => log.tags.includes('gap'));
    return { history, sink, sequencer, messages, gaps };
};

describe('redis broker sequencer', () => {

    it('delivers each publish once and in order, reading a jump from the history and reporting what it cannot read', async () => {

        const { history, sink, sequencer, messages, gaps } = setup();
        sequencer.follow('/h');
        sequencer.follow('/h');                                               // followed already: nothing changes

        // The same position twice is delivered once; publishes without a position go out as they come
        const first = history.append('/h', 1);
        await sequencer.accept(first);
        await sequencer.accept(first);
        await sequencer.accept({ path: '/h', message: 'plain' });
        expect(messages()).to.equal([1, 'plain']);

        // A jump: what was missed is read, the publish that showed it is delivered after
        history.append('/h', 2);
        history.append('/h', 3);
        await sequencer.accept(history.append('/h', 4));
        expect(messages()).to.equal([1, 'plain', 2, 3, 4]);
        expect(history.reads).to.equal(1);

        // A new epoch whose start was missed: reported, delivered from its start
        history.forget('/h');
        history.append('/h', 5);
        const epoch = first.position!.epoch;
        const sixth = history.append('/h', 6);
        await sequencer.accept(sixth);
        expect(messages()).to.equal([1, 'plain', 2, 3, 4, 5, 6]);
        expect(gaps().map((log) => log.data)).to.equal([{ path: '/h', reason: 'epoch', since: { epoch, offset: 4 }, position: sixth.position }]);
        expect(gaps()[0]!.tags).to.equal(['gap']);
        expect(sink.lostPaths).to.equal(['/h']);

        // Publishes that come during a read wait for it, then go out in order
        history.close();
        history.append('/h', 7);
        const eighth = sequencer.accept(history.append('/h', 8));
        await until(() => history.reads === 3);
        const ninth = sequencer.accept(history.append('/h', 9));
        await wait(20);
        expect(messages()).to.equal([1, 'plain', 2, 3, 4, 5, 6]);
        history.open();
        await Promise.all([eighth, ninth]);
        expect(messages()).to.equal([1, 'plain', 2, 3, 4, 5, 6, 7, 8, 9]);
        expect(history.reads).to.equal(3);

        // A delivery that fails while the history is read is logged, and the rest go on
        const failing = setup();
        failing.sequencer.follow('/f');
        await failing.sequencer.accept(failing.history.append('/f', 1));
        failing.history.append('/f', 'bad');
        failing.sink.deliver = (envelope) => (envelope.message === 'bad' ? Promise.reject(new Error('bad')) : undefined);
        await failing.sequencer.accept(failing.history.append('/f', 3));
        await until(() => failing.sink.logs.length === 1);
        expect(failing.sink.logs[0]!.tags).to.equal(['deliver', 'error']);
        expect(failing.sink.lostPaths).to.equal([]);
    });

    it('delivers the publishes of a path it does not follow as they come, without tracking them', async () => {

        const { history, sequencer, messages } = setup();
        await sequencer.accept(history.append('/u', 'untracked'));
        history.append('/u', 'missed');
        await sequencer.accept(history.append('/u', 'after a jump'));
        sequencer.baseline('/u', { epoch: 'e1', offset: 0 });                   // left before its baseline was read
        sequencer.interrupt();
        sequencer.resume('/u');
        await wait(20);
        expect(messages()).to.equal(['untracked', 'after a jump']);
        expect(history.reads).to.equal(0);
    });

    it('heals after a reconnection from where the path stood when followed, when nothing was delivered before the drop', async () => {

        const { history, sequencer, sink } = setup();
        history.append('/b', 'before');
        sequencer.follow('/b');
        sequencer.baseline('/b', { epoch: 'e1', offset: 1 });
        sequencer.follow('/fresh');
        sequencer.baseline('/fresh', { epoch: '', offset: 0 });                 // no publish ever: healed from offset 1
        sequencer.follow('/quiet');                                             // nothing delivered, no baseline: nothing to heal from
        history.append('/b', 'missed-1');
        history.append('/b', 'missed-2');
        history.append('/fresh', 'missed-3');

        sequencer.interrupt();
        ['/b', '/fresh', '/quiet'].forEach((path) => sequencer.resume(path));
        await until(() => sink.delivered.length === 3);
        await sequencer.accept(history.append('/b', 'live'));
        expect(sink.delivered.filter((envelope) => envelope.path === '/b').map((envelope) => envelope.message)).to.equal(['missed-1', 'missed-2', 'live']);
        expect(sink.delivered.filter((envelope) => envelope.path === '/fresh').map((envelope) => envelope.message)).to.equal(['missed-3']);
        expect(history.reads).to.equal(2);
        expect(sink.lostPaths).to.equal([]);
    });

    it('checks the first publish after a reconnection for a gap, even one of a new epoch that arrives with the acknowledgement', async () => {

        const { history, sink, sequencer, messages, gaps } = setup();
        sequencer.follow('/h');
        await sequencer.accept(history.append('/h', 1));
        const last = history.append('/h', 2);
        await sequencer.accept(last);

        // While the subscription was down: a publish this node missed, then the history expired and started again
        history.append('/h', 'missed');
        history.forget('/h');
        const fresh = history.append('/h', 'new epoch');

        // The connection was lost; the client subscribed again by itself, and the new epoch's first publish came
        // in the same read as Redis's acknowledgement: it reaches the sequencer before resume() does
        sequencer.interrupt();
        const delivered = sequencer.accept(fresh);
        await wait(20);
        expect(messages()).to.equal([1, 2]);
        sequencer.resume('/h');
        await delivered;
        expect(messages()).to.equal([1, 2, 'new epoch']);
        expect(gaps().map((log) => log.data)).to.equal([{ path: '/h', reason: 'epoch', since: last.position, position: fresh.position }]);
        expect(sink.lostPaths).to.equal(['/h']);
    });

    it('holds live publishes while it reads the history, retries while the history does not answer, and gives up after the timeout', async () => {

        const { history, sink, sequencer, messages, gaps } = setup(400);
        sequencer.follow('/h');
        await sequencer.accept(history.append('/h', 1));

        // Live publishes arriving during the read are held, a reconnection during it reads again
        history.close();
        history.append('/h', 2);
        const third = sequencer.accept(history.append('/h', 3));
        await until(() => history.reads === 1);
        const fourth = sequencer.accept(history.append('/h', 4));
        await wait(20);
        sequencer.interrupt();
        sequencer.resume('/h');
        await wait(20);
        expect(messages()).to.equal([1]);
        history.open();
        await Promise.all([third, fourth]);
        expect(messages()).to.equal([1, 2, 3, 4]);
        expect(history.reads).to.equal(2);

        // The history does not answer: retried until `timeout`, then the gap is logged and the held publishes go out
        history.fail = true;
        history.append('/h', 5);
        const readsBefore = history.reads;
        const started = Date.now();
        await sequencer.accept(history.append('/h', 6));
        expect(Date.now() - started).to.be.within(350, 2000);
        expect(history.reads - readsBefore).to.be.above(1);                   // retried
        expect(messages()).to.equal([1, 2, 3, 4, 6]);
        expect(gaps()).to.have.length(1);
        expect(gaps()[0]!.tags).to.equal(['gap', 'error']);                     // the broker adds 'redis'
        expect(gaps()[0]!.data).to.include({ path: '/h' });
        expect(sink.lostPaths).to.equal(['/h']);
        history.fail = false;

        // Left while the read is in flight: what was held goes out untracked
        history.close();
        history.append('/h', 7);
        const reading = history.reads;
        const eighth = sequencer.accept(history.append('/h', 8));
        await until(() => history.reads === reading + 1);
        sequencer.leave('/h');
        history.open();
        await eighth;
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8]);
        history.append('/h', 'missed');
        await sequencer.accept(history.append('/h', 'untracked'));           // no longer tracked: no jump, no read
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8, 'untracked']);
        expect(history.reads).to.equal(reading + 1);

        // Stopped while the read is in flight: the held publish is settled, nothing is delivered after
        sequencer.follow('/h');
        await sequencer.accept(history.append('/h', 9));
        history.close();
        history.append('/h', 10);
        const eleventh = sequencer.accept(history.append('/h', 11));
        await until(() => history.reads === reading + 2);
        sequencer.stop();
        await eleventh;
        history.open();
        await wait(150);
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8, 'untracked', 9]);

        // Still followed after a stop, from scratch
        await sequencer.accept(history.append('/h', 12));
        history.append('/h', 13);
        await sequencer.accept(history.append('/h', 14));
        expect(messages()).to.equal([1, 2, 3, 4, 6, 8, 'untracked', 9, 12, 13, 14]);
    });

    it('releases what it held for a reconnection when the path is left before its subscription is back', async () => {

        const { history, sequencer, messages } = setup();
        sequencer.follow('/h');
        await sequencer.accept(history.append('/h', 1));
        sequencer.interrupt();
        const second = sequencer.accept(history.append('/h', 2));             // arrived with the acknowledgement
        sequencer.leave('/h');
        await second;
        expect(messages()).to.equal([1, 2]);
        expect(history.reads).to.equal(0);
    });

    it('keeps holding after a read that was in flight when the connection dropped, until the subscription is back', async () => {

        const { history, sequencer, messages, gaps } = setup();
        sequencer.follow('/h');
        await sequencer.accept(history.append('/h', 1));
        history.close();
        history.append('/h', 2);
        const third = sequencer.accept(history.append('/h', 3));
        await until(() => history.reads === 1);

        sequencer.interrupt();                                               // dropped during the read
        history.open();
        await until(() => history.reads === 2);                              // read again: the first may predate the drop
        await wait(20);
        expect(messages()).to.equal([1, 2, 3]);
        history.forget('/h');
        const fresh = history.append('/h', 'new epoch');
        const after = sequencer.accept(fresh);                               // came with the acknowledgement
        await wait(20);
        expect(messages()).to.equal([1, 2, 3]);

        sequencer.resume('/h');
        await Promise.all([third, after]);
        expect(messages()).to.equal([1, 2, 3, 'new epoch']);
        expect(history.reads).to.equal(3);
        expect(gaps().map((log) => log.data)).to.equal([{ path: '/h', reason: 'epoch', since: { epoch: 'e1', offset: 3 }, position: fresh.position }]);

        // Stopped during such a read: what was held is settled, nothing delivered
        history.close();
        history.append('/h', 'missed');
        const jumped = sequencer.accept(history.append('/h', 'jumped'));
        await until(() => history.reads === 4);
        sequencer.interrupt();
        sequencer.stop();
        await jumped;
        history.open();
        await wait(20);
        expect(messages()).to.equal([1, 2, 3, 'new epoch']);
    });
});
