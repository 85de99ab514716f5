import { vmidStoreContract } from './contract-suite.js';

// The VMID store's contract on the in-process stores and on one Redis server; on Sentinel and
// a Redis Cluster see contract-topologies.test.ts.
for (const kind of ['memory', 'redis', 'redis-local', 'memory-durable', 'redis-durable'] as const)
  vmidStoreContract(kind);
