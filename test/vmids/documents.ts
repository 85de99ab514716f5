import { graphql } from '../gql/index.js';

export const VmidsTaken = graphql(`
  query VmidsTaken($nodeId: ID!) {
    vmidsTaken(nodeId: $nodeId) {
      nodeId
      taken
      reserved
      fromCache
      refreshedAt
      expiresAt
      version
    }
  }
`);

export const NodeVmids = graphql(`
  query NodeVmids($id: ID!) {
    node(id: $id) {
      id
      vmids {
        taken
        reserved
        version
      }
    }
  }
`);

export const IsVmidTaken = graphql(`
  query IsVmidTaken($nodeId: ID!, $vmid: Int!) {
    isVmidTaken(nodeId: $nodeId, vmid: $vmid)
  }
`);

export const NextFreeVmid = graphql(`
  query NextFreeVmid($nodeId: ID!, $min: Int) {
    nextFreeVmid(nodeId: $nodeId, min: $min)
  }
`);

export const RefreshVmidCache = graphql(`
  mutation RefreshVmidCache($nodeId: ID!) {
    refreshVmidCache(nodeId: $nodeId) {
      taken
      version
      fromCache
    }
  }
`);

export const InvalidateVmidCache = graphql(`
  mutation InvalidateVmidCache($nodeId: ID!) {
    invalidateVmidCache(nodeId: $nodeId)
  }
`);

export const ReserveVmid = graphql(`
  mutation ReserveVmid($nodeId: ID!, $vmid: Int, $ttlSeconds: Int) {
    reserveVmid(nodeId: $nodeId, vmid: $vmid, ttlSeconds: $ttlSeconds) {
      nodeId
      vmid
      expiresAt
    }
  }
`);

export const ReleaseVmid = graphql(`
  mutation ReleaseVmid($nodeId: ID!, $vmid: Int!) {
    releaseVmid(nodeId: $nodeId, vmid: $vmid)
  }
`);

export const VmidEvents = `subscription VmidEvents($nodeId: ID) { vmidEvents(nodeId: $nodeId) { nodeId kind version at vmids added removed expiresAt } }`;
