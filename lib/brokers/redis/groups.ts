// Server-side subscriptions over Redis: commands travel on one channel that every node subscribes to; recorded
// memberships are two hashes per side (user -> path -> end, path -> user -> end; end 0: none, else ms since
// epoch by Redis's clock). Recording (or removing) and publishing the command are one script, so either both
// happen or neither. Ended memberships are dropped whenever their user's or path's hash is read or written.

import { tooManyRequests } from '@hapi/boom';

import type { GroupStore, MembershipCommand } from '../../broker';
import { script } from './scripts';
import type { Command, Scripts } from './scripts';

// KEYS: the user's hash. ARGV: channel, message, action, user, ttl ('' for none), max, path-hash prefix, paths...
// Returns 0 when the user would have more than max paths (nothing changed), 1 otherwise.
const change = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local userKey, user, prefix = KEYS[1], ARGV[4], ARGV[7]
local count = 0
local fields = redis.call('HGETALL', userKey)
for i = 1, #fields, 2 do
    local ends = tonumber(fields[i + 1])
    if ends ~= 0 and ends <= now then
        redis.call('HDEL', userKey, fields[i])
        redis.call('HDEL', prefix .. fields[i], user)
    else
        count = count + 1
    end
end
if ARGV[3] == 'subscribe' then
    local added = 0
    for i = 8, #ARGV do
        if redis.call('HEXISTS', userKey, ARGV[i]) == 0 then
            added = added + 1
        end
    end
    if count + added > tonumber(ARGV[6]) then
        return 0
    end
    local ends = 0
    if ARGV[5] ~= '' then
        ends = now + tonumber(ARGV[5])
    end
    for i = 8, #ARGV do
        redis.call('HSET', userKey, ARGV[i], ends)
        redis.call('HSET', prefix .. ARGV[i], user, ends)
    end
else
    for i = 8, #ARGV do
        redis.call('HDEL', userKey, ARGV[i])
        redis.call('HDEL', prefix .. ARGV[i], user)
    end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
`;

// KEYS: one side's hash. ARGV: the other side's hash prefix, this side's name. Returns the live fields.
const read = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local live = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    local ends = tonumber(fields[i + 1])
    if ends ~= 0 and ends <= now then
        redis.call('HDEL', KEYS[1], fields[i])
        redis.call('HDEL', ARGV[1] .. fields[i], ARGV[2])
    else
        live[#live + 1] = fields[i]
    end
end
return live
`;

const scripts = { change: script(change), read: script(read) };

export interface GroupKeys {
    readonly prefix: string;
    readonly membership: string;                  // the channel of membership commands
}

export class RedisGroups implements GroupStore {

    private readonly userHashes: string;          // hash prefixes: user -> paths, path -> users
    private readonly pathHashes: string;

    // `frame(json, publish)` has the broker wrap the command as it wraps every message, publish it, and resolve once
    // this node applied it.
    constructor(private readonly command: Command, private readonly runner: Scripts, private readonly keys: GroupKeys, private readonly frame: (json: string, publish: (message: string) => Promise<unknown>) => Promise<void>) {

        this.userHashes = `${keys.prefix}gu:`;
        this.pathHashes = `${keys.prefix}gp:`;
    }

    send(command: MembershipCommand, persist: { ttl: number | null; max: number } | null): Promise<void> {

        const json = JSON.stringify(command);
        if (!persist) {
            return this.frame(json, (message) => this.command(['PUBLISH', this.keys.membership, message]));
        }

        return this.frame(json, async (message) => {

            const user = command.user!;                  // persistent memberships are a user's
            const done = await this.runner.run(scripts.change, [this.userHashes + user], [this.keys.membership, message, command.action, user, persist.ttl === null ? '' : `${persist.ttl}`, `${persist.max}`, this.pathHashes, ...command.paths]);
            if (!Number(done)) {
                throw tooManyRequests('Too many subscriptions');
            }
        });
    }

    async paths(user: string): Promise<string[]> {

        return await this.runner.run(scripts.read, [this.userHashes + user], [this.pathHashes, user]) as string[];
    }

    async members(path: string): Promise<string[]> {

        return await this.runner.run(scripts.read, [this.pathHashes + path], [this.userHashes, path]) as string[];
    }
}
