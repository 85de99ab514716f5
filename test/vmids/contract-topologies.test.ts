import { inject } from 'vitest';
import { vmidStoreContract } from './contract-suite.js';

// The VMID store's contract on the test run's Sentinel group and Redis Cluster (three masters,
// one replica each), started once per run by test/support/global-setup.ts.
vmidStoreContract('redis-durable', inject('redisSentinelUrl'), 'Sentinel');
vmidStoreContract('redis', inject('redisClusterUrl'), 'Redis Cluster');
vmidStoreContract('redis-local', inject('redisClusterUrl'), 'Redis Cluster');
vmidStoreContract('redis-durable', inject('redisClusterUrl'), 'Redis Cluster');
