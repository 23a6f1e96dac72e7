// The `hapi-pulse/redis` entry: the Redis broker, kept out of the main entry so that applications on one node
// never load @redis/client (an optional peer dependency, needed only by those who import this entry).

export { RedisBroker } from './brokers/redis/broker';
export type { RedisBrokerOptions } from './brokers/redis/broker';
