// The time-sliced scheduler behind heartbeats and credential sweeps: every member once per interval, in small
// slices, joins and departures mid-round neither skipped nor visited twice, follow-ups a fixed number of turns on.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Rounds } from '../lib/server/rounds';
import { until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

interface Member { name: number; slot: number }

// Records visits grouped by the synchronous run (one bucket turn, or one chunk of it) they happened in.
class Log {

    readonly runs: Array<Array<{ kind: 'visit' | 'followUp'; name: number }>> = [];
    private open = false;

    record(kind: 'visit' | 'followUp', member: Member): void {

        if (!this.open) {
            this.open = true;
            this.runs.push([]);
            queueMicrotask(() => (this.open = false));
        }

        this.runs[this.runs.length - 1]!.push({ kind, name: member.name });
    }

    visits(): number[] {

        return this.runs.flat().filter((entry) => entry.kind === 'visit').map((entry) => entry.name);
    }
}

const members = (from: number, count: number): Member[] => Array.from({ length: count }, (_, i) => ({ name: from + i, slot: -1 }));

describe('Rounds', () => {

    it('visits every member once per interval, one bucket per turn', async () => {

        const log = new Log();
        const rounds = new Rounds<Member>({ interval: 200, sliceMs: 20, slot: 'slot', visit: (m) => log.record('visit', m) });
        expect(rounds.buckets).to.equal(10);
        expect(rounds.sliceMs).to.equal(20);
        expect(new Rounds<Member>({ interval: 15000, slot: 'slot', visit: () => { } }).buckets).to.equal(300);    // 50 ms slices by default
        const all = members(0, 95);
        all.forEach((m) => rounds.add(m));
        expect(rounds.count).to.equal(95);
        rounds.start();
        await until(() => log.visits().length >= 95 * 3, 5000, 'three rounds');
        rounds.stop();

        // Every window of one round holds each member exactly once, and the order repeats round after round.
        const visits = log.visits();
        for (let round = 0; round < 3; ++round) {
            const window = visits.slice(round * 95, round * 95 + 95);
            expect(new Set(window).size).to.equal(95);
            expect(window).to.equal(visits.slice(0, 95));
        }

        // One bucket per turn: 95 members over 10 buckets, round-robin, is 9 or 10 each.
        for (const run of log.runs) {
            expect(run.length).to.be.within(9, 10);
        }
    });

    it('spreads a round over its interval instead of visiting everyone at once', async () => {

        const visitedAt: number[] = [];
        const rounds = new Rounds<Member>({ interval: 400, sliceMs: 40, slot: 'slot', visit: () => visitedAt.push(performance.now()) });
        members(0, 100).forEach((m) => rounds.add(m));
        const start = performance.now();
        rounds.start();
        await until(() => visitedAt.length >= 100, 5000, 'one round');
        rounds.stop();

        // Ten turns, 40 ms apart: the last bucket is visited at least 9 turns (360 ms, less a few ms of timer rounding)
        // after the start. Timers are never early, so this holds however loaded the machine is.
        expect(visitedAt[99]! - start).to.be.at.least(355);
        expect(visitedAt.filter((at) => at - start < 100).length).to.be.below(100);
    });

    it('yields to I/O every chunk members when a bucket is large', async () => {

        const log = new Log();
        const rounds = new Rounds<Member>({ interval: 100, sliceMs: 100, chunk: 7, slot: 'slot', visit: (m) => log.record('visit', m) });
        expect(rounds.buckets).to.equal(1);
        members(0, 30).forEach((m) => rounds.add(m));
        rounds.start();
        await until(() => log.visits().length >= 30, 5000, 'one round');
        rounds.stop();
        expect(log.runs.slice(0, 5).map((run) => run.length)).to.equal([7, 7, 7, 7, 2]);
        expect(new Set(log.visits().slice(0, 30)).size).to.equal(30);
    });

    it('follows each bucket up a fixed number of turns later, the timeout rounded up to a turn', async () => {

        const log = new Log();
        const rounds = new Rounds<Member>({
            interval: 300,
            sliceMs: 30,
            slot: 'slot',
            visit: (m) => log.record('visit', m),
            followUp: { after: 70, visit: (m) => log.record('followUp', m) }
        });

        members(0, 20).forEach((m) => rounds.add(m));
        rounds.start();
        await until(() => log.visits().length >= 40, 5000, 'two rounds');
        rounds.stop();

        // Turn t follows up what turn t - 3 visited (70 ms is 3 turns of 30 ms): in the same run, before the visit.
        const turns = log.runs;
        for (let t = 3; t < turns.length; ++t) {
            const followed = turns[t]!.filter((e) => e.kind === 'followUp').map((e) => e.name);
            const visitedEarlier = turns[t - 3]!.filter((e) => e.kind === 'visit').map((e) => e.name);
            expect(followed).to.equal(visitedEarlier);
            const firstVisit = turns[t]!.findIndex((e) => e.kind === 'visit');
            expect(turns[t]!.slice(0, firstVisit).every((e) => e.kind === 'followUp')).to.be.true();
        }

        expect(turns.slice(0, 3).flat().some((e) => e.kind === 'followUp')).to.be.false();
    });

    it('follows up a bucket on its own next visit when the delay rounds up to a whole interval', async () => {

        const log = new Log();
        const rounds = new Rounds<Member>({
            interval: 40,
            sliceMs: 50,
            slot: 'slot',
            visit: (m) => log.record('visit', m),
            followUp: { after: 39, visit: (m) => log.record('followUp', m) }
        });

        expect(rounds.buckets).to.equal(1);
        members(0, 3).forEach((m) => rounds.add(m));
        rounds.start();
        await until(() => log.runs.length >= 3, 5000, 'three turns');
        rounds.stop();
        expect(log.runs[0]!.map((e) => e.kind)).to.equal(['visit', 'visit', 'visit']);
        expect(log.runs[1]!.map((e) => e.kind)).to.equal(['followUp', 'followUp', 'followUp', 'visit', 'visit', 'visit']);
    });

    it('follows up a lone member after its delay, sleeping through the empty turns in between', async () => {

        const events: Array<{ kind: string; name: number; at: number }> = [];
        const record = (kind: string) => (m: Member) => events.push({ kind, name: m.name, at: performance.now() });
        const rounds = new Rounds<Member>({ interval: 300, sliceMs: 30, slot: 'slot', visit: record('visit'), followUp: { after: 70, visit: record('followUp') } });
        const [lone, other] = members(0, 2);
        rounds.add(lone!);                                           // bucket 0
        rounds.add(other!);                                          // bucket 1
        rounds.start();
        await until(() => events.filter((e) => e.kind === 'followUp').length >= 4, 5000, 'two rounds of follow-ups');
        rounds.stop();

        for (const name of [0, 1]) {
            const mine = events.filter((e) => e.name === name);
            expect(mine.slice(0, 4).map((e) => e.kind)).to.equal(['visit', 'followUp', 'visit', 'followUp']);
            expect(mine[1]!.at - mine[0]!.at).to.be.at.least(70 - 5);          // never before its delay (less rounding)
        }
    });

    it('skips a member that leaves while its bucket is visited, and visits one a visit added from its next turn', async () => {

        const visited: number[] = [];
        const [first, second, third] = members(0, 3);
        const rounds = new Rounds<Member>({
            interval: 60,
            sliceMs: 60,
            slot: 'slot',
            visit: (m) => {

                visited.push(m.name);
                if (m === first && !rounds.has(third!)) {
                    rounds.delete(second!);                          // later in the same bucket
                    rounds.add(third!);
                }
            }
        });

        rounds.add(first!);
        rounds.add(second!);
        rounds.start();
        await until(() => visited.length >= 3, 3000, 'two turns');
        rounds.stop();
        expect(visited.slice(0, 3)).to.equal([0, 0, 2]);
    });

    it('neither skips nor visits twice members that join and leave mid-round', async () => {

        const interval = 200;
        const log = new Log();
        const joinedAt = new Map<number, number>();
        const leftAt = new Map<number, number>();
        const rounds = new Rounds<Member>({ interval, sliceMs: 20, slot: 'slot', visit: (m) => log.record('visit', m) });
        const initial = members(0, 50);
        initial.forEach((m) => rounds.add(m));
        rounds.start();

        // Join and leave at every moment of a few rounds, including while a bucket is being visited.
        const joiners = members(1000, 60);
        for (let i = 0; i < 60; ++i) {
            await wait(9);
            const joiner = joiners[i]!;
            rounds.add(joiner);
            rounds.add(joiner);                                      // adding twice changes nothing
            joinedAt.set(joiner.name, log.runs.length);
            if (i % 2 === 0 && i < initial.length) {
                const leaver = initial[i]!;
                rounds.delete(leaver);
                rounds.delete(leaver);                               // nor does deleting twice
                leftAt.set(leaver.name, log.runs.length);
            }
        }

        const runsAtEnd = log.runs.length;
        await until(() => log.runs.length >= runsAtEnd + 2 * rounds.buckets, 5000, 'two more rounds');
        rounds.stop();
        expect(rounds.count).to.equal(50 + 60 - 25);

        const runs = log.runs;
        const turnsOf = (name: number) => runs.map((run, t) => (run.some((e) => e.name === name) ? t : -1)).filter((t) => t >= 0);
        const b = rounds.buckets;

        for (const [name, left] of leftAt) {
            expect(turnsOf(name).every((t) => t < left)).to.be.true();                   // never after leaving
        }

        for (const m of [...initial, ...joiners]) {
            if (leftAt.has(m.name)) {
                continue;
            }

            const turns = turnsOf(m.name);
            // Visited within one round of joining (of the start for the initial members), then exactly every
            // round: one visit per b turns, never two in a round, none skipped.
            const from = joinedAt.get(m.name) ?? 0;
            expect(turns[0]! - from).to.be.below(b + 1);
            for (let i = 1; i < turns.length; ++i) {
                expect(turns[i]! - turns[i - 1]!).to.equal(b);
            }

            expect(turns.length).to.be.at.least(2);
        }
    });

    it('visits nothing while it has no members, and a member added later from its first round', async () => {

        let visits = 0;
        const rounds = new Rounds<Member>({ interval: 60, sliceMs: 20, slot: 'slot', visit: () => ++visits });
        rounds.start();
        await wait(100);
        expect(visits).to.equal(0);

        const [late] = members(0, 1);
        rounds.add(late!);
        expect(rounds.has(late!)).to.be.true();
        await until(() => visits >= 2, 3000, 'two visits');
        rounds.delete(late!);
        expect(rounds.has(late!)).to.be.false();
        const seen = visits;
        await wait(150);
        expect(visits).to.equal(seen);
        rounds.stop();
    });

    it('visits a member that joins a running round one interval after it joined, not at once', async () => {

        const visitedAt = new Map<number, number>();
        const rounds = new Rounds<Member>({ interval: 400, sliceMs: 50, slot: 'slot', visit: (m) => visitedAt.set(m.name, visitedAt.get(m.name) ?? performance.now()) });
        const [first, second, third] = members(0, 3);
        rounds.add(first!);
        rounds.start();
        await until(() => visitedAt.has(0), 3000, 'first visit');

        // While the timer sleeps until the first member's next turn (the turns between are empty), and right at the
        // start of an empty ring.
        await wait(120);
        const added = performance.now();
        rounds.add(second!);
        await until(() => visitedAt.has(1), 3000, 'second visit');
        expect(visitedAt.get(1)! - added).to.be.at.least(400 - 50 - 5);

        rounds.delete(first!);
        rounds.delete(second!);
        await wait(60);
        const again = performance.now();
        rounds.add(third!);
        await until(() => visitedAt.has(2), 3000, 'third visit');
        expect(visitedAt.get(2)! - again).to.be.at.least(400 - 50 - 5);
        rounds.stop();
    });

    it('puts a member that joins while the event loop is behind in the group the overdue turns reach last', async () => {

        const visits: Array<{ name: number; at: number }> = [];
        const rounds = new Rounds<Member>({ interval: 200, sliceMs: 50, slot: 'slot', visit: (m) => visits.push({ name: m.name, at: performance.now() }) });
        const [first, second] = members(0, 2);
        rounds.add(first!);
        rounds.start();
        await until(() => visits.length === 1, 3000, 'first visit');
        const held = performance.now();
        while (performance.now() - held < 230) { }                  // the first member's next turn is overdue
        const added = performance.now();
        rounds.add(second!);
        await until(() => visits.length >= 4, 3000, 'four visits');
        rounds.stop();
        expect(visits.slice(0, 4).map((v) => v.name)).to.equal([0, 0, 1, 0]);    // the overdue turn, then one each per round
        expect(visits[2]!.at - added).to.be.at.least(90);                        // at its own turn (350 ms from the start), not at once
    });

    it('stops between two chunks when a visit stops it', async () => {

        let visits = 0;
        const rounds = new Rounds<Member>({
            interval: 50,
            sliceMs: 50,
            chunk: 4,
            slot: 'slot',
            visit: () => {

                if (++visits === 6) {
                    rounds.stop();
                }
            }
        });

        members(0, 10).forEach((m) => rounds.add(m));
        rounds.start();
        await until(() => visits >= 6, 3000, 'six visits');
        await wait(120);
        expect(visits).to.equal(6);
    });

    it('goes on from now after the event loop was held for longer than an interval', async () => {

        const visitedAt: number[] = [];
        const rounds = new Rounds<Member>({ interval: 100, sliceMs: 25, slot: 'slot', visit: () => visitedAt.push(performance.now()) });
        members(0, 4).forEach((m) => rounds.add(m));
        rounds.start();
        const held = performance.now();
        while (performance.now() - held < 300) { }                  // three intervals without a turn

        await until(() => visitedAt.length >= 8, 3000, 'two rounds');
        rounds.stop();
        // Not three rounds at once to catch up: after the hold, the four buckets come 75 ms apart in all (less rounding).
        expect(visitedAt[3]! - visitedAt[0]!).to.be.at.least(70);
    });
});
