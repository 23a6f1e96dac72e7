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
}

interface Healing {
    held: Held[];
    again: boolean;                      // read (once more) when the current read ends
    reading: boolean;
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
            return new Promise((settle) => this.hold(envelope.path, track, { envelope, settle }));
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

    // The subscriptions are being made again after a lost connection: whatever each path missed meanwhile
    // is unknown until resume(path), once its subscription is acknowledged again.
    interrupt(): void {

        for (const track of this.tracks.values()) {
            if (!track.last && track.baseline) {
                track.last = { ...track.baseline };                        // nothing delivered before the drop
            }

            track.baseline = null;
        }
    }

    // The subscription of `path` is acknowledged again: reads what it missed.
    resume(path: string): void {

        const track = this.tracks.get(path);
        if (track?.last) {
            this.heal(path, track);
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

        track.healing = { held: [item], again: true, reading: false };
        this.read(path, track, track.healing);
    }

    private heal(path: string, track: Track): void {

        const healing = track.healing;
        if (!healing) {
            track.healing = { held: [], again: true, reading: false };
            this.read(path, track, track.healing);
            return;
        }

        healing.again = true;                                              // the read in flight may predate the reconnection
        if (!healing.reading) {
            this.read(path, track, healing);
        }
    }

    private async read(path: string, track: Track, healing: Healing): Promise<void> {

        healing.reading = true;
        const deadline = Date.now() + this.timeout;
        let failed = false;
        while (healing.again && this.tracks.get(path) === track) {
            healing.again = false;
            const last = track.last!;
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

        this.release(path, track, healing, failed);
    }

    private release(path: string, track: Track, healing: Healing, failed: boolean): void {

        if (track.healing === healing) {
            track.healing = null;
        }

        // What is still missing before the first held publish cannot be read: it is lost.
        const last = track.last;
        const first = healing.held[0]?.envelope.position;
        if (this.tracks.get(path) === track && last && first && jumps(last, first)) {
            if (!failed) {
                this.gap({ path, reason: 'missing', since: { ...last }, next: first });
            }

            last.epoch = first.epoch;
            last.offset = first.offset - 1;
        }

        // Through accept() again: drops what the read delivered, heals again on a jump after the first.
        for (const { envelope, settle } of healing.held) {
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
