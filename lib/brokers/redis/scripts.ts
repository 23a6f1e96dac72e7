// What the Redis broker stores and runs: the names of its keys and channels, and the Lua that writes and
// reads the history of a path, kept as strings, behind typed wrappers. Each history write or read is one
// script, so that an offset, its stream entry and its publish are one atomic step.

import { createHash, randomBytes } from 'node:crypto';

import type { HistoryOptions, PublishEnvelope, Recovery } from '../../broker';
import type { Position } from '../../protocol';

// Sends one command (on the publishing connection) and resolves with Redis's reply.
export type Command = (args: string[]) => Promise<unknown>;

// What a path missed after a position: the path's current position (epoch '' when it keeps no history
// any more) and every entry still kept after `since`, or after offset 0 when the epoch is another one.
export interface Missed {
    epoch: string;
    offset: number;
    entries: PublishEnvelope[];
}

// Every key and channel of one broker prefix.
export class Keys {

    readonly broadcast: string;
    readonly membership: string;                          // server-side subscription commands (groups.ts)
    readonly run: string;                                 // names this Redis run (lost with the data on a restart)

    constructor(readonly prefix: string) {

        this.broadcast = `${prefix}b`;
        this.membership = `${prefix}g`;
        this.run = `${prefix}run`;
    }

    channel(path: string): string {

        return `${this.prefix}p:${path}`;
    }

    // The path of a channel made by channel().
    path(channel: string): string {

        return channel.slice(this.prefix.length + 2);
    }

    stream(path: string): string {

        return `${this.prefix}h:${path}`;
    }

    meta(path: string): string {

        return `${this.prefix}m:${path}`;
    }
}

// KEYS: stream, meta. ARGV: channel, header, envelope JSON (no position), size, ttl, fresh epoch.
// The meta hash (epoch, offset) marks a history incarnation: when it is gone, so is the stream.
const publishScript = `
local stream, meta = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'created', now)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local json = ARGV[3]
local entry = string.sub(json, 1, -2) .. ',"position":{"epoch":"' .. epoch .. '","offset":' .. string.format('%d', offset) .. '}}'
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '0-' .. string.format('%d', offset), 't', now, 'e', entry)
redis.call('PEXPIRE', stream, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. entry)
return { epoch, offset }
`;

// One publish to several paths: each path as publishScript would, in one atomic step. The envelope travels once:
// each path's entry is `{"path":<path JSON>` + the body + (its position) + `}`.
// KEYS: stream, meta of each path that keeps history, in order. ARGV: path count, header prefix, first sequence
// number (path i's header is the prefix and first + i - 1), body (the envelope JSON without its path, braces and
// position), fresh epoch, then for each path: channel, path JSON, size ('' when it keeps no history), ttl.
// Returns { epoch, offset } of each path that keeps history, flat, in order. Redis does not undo the writes of a
// script that fails midway: the history keys are checked first (a key of another type refuses the whole publish
// before anything is written), and every write comes before the first publish.
const publishManyScript = `
for j = 1, #KEYS, 2 do
    local stream, meta = redis.call('TYPE', KEYS[j])['ok'], redis.call('TYPE', KEYS[j + 1])['ok']
    if (stream ~= 'none' and stream ~= 'stream') or (meta ~= 'none' and meta ~= 'hash') then
        return redis.error_reply('WRONGTYPE history of ' .. KEYS[j] .. ' held by keys of another type')
    end
end
local count, prefix, first, body = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
if body ~= '' then
    body = ',' .. body
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local entries, result, k = {}, {}, 0
for i = 1, count do
    local a = 5 + (i - 1) * 4
    local entry = '{"path":' .. ARGV[a + 2] .. body
    local size = ARGV[a + 3]
    if size == '' then
        entry = entry .. '}'
    else
        local stream, meta = KEYS[k + 1], KEYS[k + 2]
        k = k + 2
        local epoch = redis.call('HGET', meta, 'epoch')
        if not epoch then
            epoch = ARGV[5] .. string.format('%d', i)
            redis.call('DEL', stream)
            redis.call('HSET', meta, 'epoch', epoch, 'created', now)
        end
        local offset = redis.call('HINCRBY', meta, 'offset', 1)
        entry = entry .. ',"position":{"epoch":"' .. epoch .. '","offset":' .. string.format('%d', offset) .. '}}'
        redis.call('XADD', stream, 'MAXLEN', '~', size, '0-' .. string.format('%d', offset), 't', now, 'e', entry)
        redis.call('PEXPIRE', stream, ARGV[a + 4])
        redis.call('PEXPIRE', meta, ARGV[a + 4])
        result[k - 1] = epoch
        result[k] = offset
    end
    entries[i] = entry
end
for i = 1, count do
    redis.call('PUBLISH', ARGV[5 + (i - 1) * 4 + 1], prefix .. string.format('%d', first + i - 1) .. '\\n' .. entries[i])
end
return result
`;

// KEYS: stream, meta, run. ARGV: since epoch ('' for none), since offset, size, ttl, fresh run id.
// Returns { epoch, offset, recovered (1 / 0), entry JSON... }.
// A path nobody published to stores nothing: its position is \`~<run>:<ms>\` at offset 0, naming this Redis
// run (the run key, lost with the data when Redis restarts without persistence) and this moment. A resume
// from such a position gets the stream made after it, if no older than the ttl (so none came and went).
const recoverScript = `
local stream, meta = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local current = redis.call('HMGET', meta, 'epoch', 'offset', 'created')
local epoch, offset = current[1], tonumber(current[2]) or 0
local sinceEpoch = ARGV[1]
local since = tonumber(ARGV[2])
local run, given
if not epoch or string.sub(sinceEpoch, 1, 1) == '~' then
    run = redis.call('GET', KEYS[3])
    if not run then
        run = ARGV[5]
        redis.call('SET', KEYS[3], run)
    end
    if sinceEpoch ~= '' then
        local sinceRun, at = string.match(sinceEpoch, '^~([^:]*):(%d+)$')
        given = tonumber(at)
        if sinceRun ~= run or since ~= 0 or not given or given > now or now - given > tonumber(ARGV[4]) then
            given = nil
        end
    end
end
if not epoch then
    local empty = '~' .. run .. ':' .. string.format('%d', now)
    if sinceEpoch == '' or given then
        return { empty, 0, 1 }
    end
    return { empty, 0, 0 }
end
if string.sub(sinceEpoch, 1, 1) == '~' then
    if not given or (tonumber(current[3]) or 0) < given then
        return { epoch, offset, 0 }
    end
    sinceEpoch = epoch
end
if sinceEpoch == '' then
    return { epoch, offset, 1 }
end
if sinceEpoch ~= epoch or since > offset then
    return { epoch, offset, 0 }
end
local missed = offset - since
if missed == 0 then
    return { epoch, offset, 1 }
end
if missed > tonumber(ARGV[3]) then
    return { epoch, offset, 0 }
end
local time = redis.call('TIME')
local oldest = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - tonumber(ARGV[4])
local range = redis.call('XRANGE', stream, '0-' .. string.format('%d', since + 1), '+', 'COUNT', missed)
if #range ~= missed then
    return { epoch, offset, 0 }
end
local result = { epoch, offset, 1 }
for i, item in ipairs(range) do
    if tonumber(item[2][2]) < oldest then
        return { epoch, offset, 0 }
    end
    result[i + 3] = item[2][4]
end
return result
`;

// KEYS: stream, meta. ARGV: epoch, offset of the last publish this node delivered.
// Returns { epoch ('' when the path has no history any more), offset, entry JSON... }: every entry still
// kept after that position, or after offset 0 of the current epoch when it is another one.
const missedScript = `
local stream, meta = KEYS[1], KEYS[2]
local current = redis.call('HMGET', meta, 'epoch', 'offset')
local epoch, offset = current[1], tonumber(current[2]) or 0
if not epoch then
    return { '', 0 }
end
local since = 0
if epoch == ARGV[1] then
    since = tonumber(ARGV[2])
end
local result = { epoch, offset }
if offset <= since then
    return result
end
local range = redis.call('XRANGE', stream, '0-' .. string.format('%d', since + 1), '+', 'COUNT', offset - since)
for i, item in ipairs(range) do
    result[i + 2] = item[2][4]
end
return result
`;

export interface Script {
    source: string;
    sha: string;
}

export const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });

const scripts = {
    publish: script(publishScript),
    publishMany: script(publishManyScript),
    recover: script(recoverScript),
    missed: script(missedScript)
};

const freshEpoch = (): string => randomBytes(6).toString('base64url');

// The typed calls of the scripts (and of the one plain read of a path's history), over any connection.
export class Scripts {

    constructor(private readonly command: Command, private readonly keys: Keys) { }

    // Appends a publish to the history of its path and publishes it (`header` + '\n' + the entry) on the
    // path's channel; resolves with its position.
    async publish(path: string, header: string, json: string, history: HistoryOptions): Promise<Position> {

        const [epoch, offset] = await this.run(scripts.publish, [this.keys.stream(path), this.keys.meta(path)], [this.keys.channel(path), header, json, `${history.size}`, `${history.ttl}`, freshEpoch()]) as [string, number];
        return { epoch, offset: Number(offset) };
    }

    // One publish to several paths (publishManyScript): `body` is the envelope JSON without its path, braces and
    // position, the same for every path; path i goes out with header `prefix` + (first + i). Resolves with the
    // position of each path that keeps history, in order.
    async publishMany(paths: { path: string; history?: HistoryOptions | undefined }[], prefix: string, first: number, body: string): Promise<Position[]> {

        const keys: string[] = [];
        const args = [`${paths.length}`, prefix, `${first}`, body, freshEpoch()];
        for (const { path, history } of paths) {
            if (history) {
                keys.push(this.keys.stream(path), this.keys.meta(path));
            }

            args.push(this.keys.channel(path), JSON.stringify(path), history ? `${history.size}` : '', history ? `${history.ttl}` : '');
        }

        const flat = await this.run(scripts.publishMany, keys, args) as (string | number)[];
        const positions: Position[] = [];
        for (let i = 0; i < flat.length; i += 2) {
            positions.push({ epoch: flat[i] as string, offset: Number(flat[i + 1]) });
        }

        return positions;
    }

    async recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery> {

        const [epoch, offset, recovered, ...entries] = await this.run(scripts.recover, [this.keys.stream(path), this.keys.meta(path), this.keys.run], [since ? since.epoch : '', since ? `${since.offset}` : '0', `${history.size}`, `${history.ttl}`, freshEpoch()]) as [string, number, number, ...string[]];
        const position = { epoch, offset: Number(offset) };
        if (!Number(recovered)) {
            return { recovered: false, position };
        }

        return { recovered: true, entries: entries.map((entry) => JSON.parse(entry)), position };
    }

    async missed(path: string, since: Position): Promise<Missed> {

        const [epoch, offset, ...entries] = await this.run(scripts.missed, [this.keys.stream(path), this.keys.meta(path)], [since.epoch, `${since.offset}`]) as [string, number, ...string[]];
        return { epoch, offset: Number(offset), entries: entries.map((entry) => JSON.parse(entry)) };
    }

    // Where the history of a path stands now (epoch '' at offset 0 when it keeps none).
    async position(path: string): Promise<Position> {

        const [epoch, offset] = await this.command(['HMGET', this.keys.meta(path), 'epoch', 'offset']) as [string | null, string | null];
        return { epoch: epoch ?? '', offset: Number(offset ?? 0) };
    }

    // By hash first; a Redis that does not know the script yet (a fresh or restarted one) gets its source.
    async run(script: Script, keys: string[], args: string[]): Promise<unknown> {

        try {
            return await this.command(['EVALSHA', script.sha, `${keys.length}`, ...keys, ...args]);
        }
        catch (err) {
            if (!(err as Error).message.includes('NOSCRIPT')) {
                throw err;
            }

            return await this.command(['EVAL', script.source, `${keys.length}`, ...keys, ...args]);
        }
    }
}
