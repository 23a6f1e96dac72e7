// Delivery of the paths that keep history: each publish once, in order, gaps healed from the history.
// Offsets of a path are contiguous on its channel (one script increments and publishes), so an offset
// already seen is a duplicate and a jump is a gap. A gap is read from the history (the injected `read`)
// while the live publishes after it wait; what cannot be read is reported lost. Nothing here knows Redis.

import type { PublishEnvelope } from '../../broker';
import type { Position } from '../../protocol';
import type { Missed } from './scripts';

export interface SequencerHost {
    read(path: string, since: Position): Promise<Missed>;      // what the path kept after `since`
    deliver(envelope: PublishEnvelope): void | Promise<void>;
    log(tags: string[], data: unknown): void;
    lost(path: string): void;                                     // publishes of the path were missed for good
}

// A live publish held while its path heals, and how to settle the promise accept() returned for it.
interface Held {
    envelope: PublishEnvelope;
    settle: (delivered: void | Promise<void>) => void;
    reads: number;                       // reads sent before it came
}

interface Healing {
    held: Held[];
    reads: number;                       // sent so far
    again: boolean;                      // read (once more) when the current read ends
    reading: boolean;
    waiting: boolean;                    // the subscription is lost or not back yet: hold until resume()
}

// One path this node follows.
interface Track {
    last: Position | null;               // the last publish delivered (updated in place)
    baseline: Position | null;           // where the path stood when followed: healed from if nothing came before a drop
    healing: Healing | null;
}

// Whether `position` comes after a publish not delivered since `last` (offsets of an epoch start at 1).
const jumps = (last: Position, position: Position): boolean => position.epoch === last.epoch ? position.offset > last.offset + 1 : position.offset > 1;

export class Sequencer {

    private readonly tracks = new Map<string, Track>();

    // `timeout`: ms a failing read is retried before the gap is given up; `retry`: ms between tries.
    constructor(private readonly host: SequencerHost, private readonly timeout: number, private readonly retry = 100) { }

    // This node receives the publishes of `path` from now on.
    follow(path: string): void {

        if (!this.tracks.has(path)) {
            this.tracks.set(path, { last: null, baseline: null, healing: null });
        }
    }

    // Where `path` stood when it was followed (read after the subscription was acknowledged).
    baseline(path: string, position: Position): void {

        const track = this.tracks.get(path);
        if (track) {
            track.baseline = position;
        }
    }

    leave(path: string): void {

        const track = this.tracks.get(path);
        this.tracks.delete(path);
        if (track?.healing && !track.healing.reading) {
            this.release(path, track, track.healing, false);             // held for a read that will not come
        }
    }

    // Hot path: one lookup and one comparison per publish.
    accept(envelope: PublishEnvelope): void | Promise<void> {

        const position = envelope.position;
        const track = position && this.tracks.get(envelope.path);
        if (!track) {
            return this.host.deliver(envelope);                           // no history, or a path left: as it comes
        }

        const last = track.last;
        if (track.healing || last && jumps(last, position!)) {
            return new Promise((settle) => this.hold(envelope.path, track, { envelope, settle, reads: track.healing?.reads ?? 0 }));
        }

        if (last) {
            if (position!.epoch === last.epoch && position!.offset <= last.offset) {
                return;                                                    // already delivered
            }

            last.epoch = position!.epoch;
            last.offset = position!.offset;
        }
        else {
            track.last = { epoch: position!.epoch, offset: position!.offset };
        }

        return this.host.deliver(envelope);
    }

    // The subscribing connection is lost: what each path misses from now on is unknown until resume(path).
    // Every publish is held until then, even one that shows no jump: the client subscribes again by itself
    // and hands over the publishes that come with Redis's acknowledgement before the broker hears of it, and
    // the first publish of a new epoch (offset 1) may follow publishes of the old one that were missed.
    interrupt(): void {

        for (const track of this.tracks.values()) {
            this.promote(track);
            track.baseline = null;
            if (track.healing) {
                track.healing.waiting = true;
                track.healing.again = true;                                // a read in flight may predate the drop
            }
            else if (track.last) {
                track.healing = { held: [], reads: 0, again: true, reading: false, waiting: true };
            }
        }
    }

    // The subscription of `path` is back: reads what it missed, then releases what was held.
    resume(path: string): void {

        const track = this.tracks.get(path);
        if (!track) {
            return;
        }

        this.promote(track);
        if (!track.last) {
            return;
        }

        const healing = track.healing ??= { held: [], reads: 0, again: true, reading: false, waiting: false };
        healing.waiting = false;
        healing.again = true;
        if (!healing.reading) {
            this.read(path, track, healing);
        }
    }

    // Settles what is held without delivering it, and forgets every position; the paths stay followed (the
    // broker subscribes to them again when it starts again).
    stop(): void {

        for (const [path, { healing }] of this.tracks) {
            healing?.held.splice(0).forEach((item) => item.settle());
            this.tracks.set(path, { last: null, baseline: null, healing: null });
        }
    }

    private hold(path: string, track: Track, item: Held): void {

        if (track.healing) {
            track.healing.held.push(item);                                 // checked again when released
            return;
        }

        track.healing = { held: [item], reads: 0, again: true, reading: false, waiting: false };
        this.read(path, track, track.healing);
    }

    // Nothing delivered before a drop: healed from where the path stood when followed.
    private promote(track: Track): void {

        if (!track.last && track.baseline) {
            track.last = { ...track.baseline };
        }
    }

    private async read(path: string, track: Track, healing: Healing): Promise<void> {

        healing.reading = true;
        const deadline = Date.now() + this.timeout;
        let failed = false;
        while (healing.again && this.tracks.get(path) === track) {
            healing.again = false;
            const last = track.last!;
            ++healing.reads;
            try {
                const missed = await this.host.read(path, { ...last });
                if (this.tracks.get(path) === track) {                     // not left meanwhile
                    this.caughtUp(path, last, missed);
                }
            }
            catch (err) {
                if (Date.now() >= deadline) {
                    this.host.log(['gap', 'error'], { path, since: { ...last }, error: err });
                    this.host.lost(path);
                    failed = true;
                    break;
                }

                healing.again = true;                                      // unreachable: retry until `timeout`
                await new Promise((resolve) => setTimeout(resolve, this.retry));
            }
        }

        healing.reading = false;
        if (healing.waiting && this.tracks.get(path) === track) {
            return;                                                        // the connection dropped meanwhile: resume() reads again
        }

        this.release(path, track, healing, failed);
    }

    private release(path: string, track: Track, healing: Healing, failed: boolean): void {

        track.healing = null;

        // Held before the last read was sent, of another epoch than it read: published before it ran, so of an
        // older epoch (which accept() would take for a gap in the new one). Dropped.
        const current = this.tracks.get(path) === track;
        const last = track.last;
        const held = current && !failed ? healing.held.filter((item) => item.reads === healing.reads || item.envelope.position!.epoch === last!.epoch || item.settle()) : healing.held;

        // What is still missing before the first held publish cannot be read: it is lost.
        const first = held[0]?.envelope.position;
        if (current && first && jumps(last!, first)) {
            if (!failed) {
                this.gap({ path, reason: 'missing', since: { ...last! }, next: first });
            }

            last!.epoch = first.epoch;
            last!.offset = first.offset - 1;
        }

        // Through accept() again: drops what the read delivered, heals again on a jump after the first.
        for (const { envelope, settle } of held) {
            settle(this.accept(envelope));
        }
    }

    private caughtUp(path: string, last: Position, { epoch, offset, entries }: Missed): void {

        if (epoch !== last.epoch && last.epoch !== '') {
            this.gap({ path, reason: 'epoch', since: { ...last }, position: { epoch, offset } });
        }

        const expected = epoch === last.epoch ? last.offset + 1 : 1;
        const first = entries[0]?.position!.offset ?? offset + 1;
        if (first > expected) {
            this.gap({ path, reason: 'trimmed', since: { epoch, offset: expected - 1 }, missed: first - expected });
        }

        last.epoch = epoch;
        last.offset = first - 1;
        for (const envelope of entries) {
            last.offset = envelope.position!.offset;
            this.host.deliver(envelope)?.catch(this.deliveryFailed);
        }
    }

    private readonly deliveryFailed = (err: unknown): void => {

        this.host.log(['deliver', 'error'], err);
    };

    // A gap this node cannot heal: logged, and reported lost.
    private gap(data: { path: string; reason: string; [key: string]: unknown }): void {

        this.host.log(['gap'], data);
        this.host.lost(data.path);
    }
}
