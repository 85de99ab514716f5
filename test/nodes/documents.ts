import { graphql } from '../gql/index.js';

export const CreateNode = graphql(`
  mutation CreateNode($input: CreateNodeInput!) {
    createNode(input: $input) {
      id
      name
      host
      port
      tokenId
      isDefault
      hasSshPassword
      tlsFingerprint
      allowInsecureTls
      pveVersion
      clusterName
      pveNodeNames
      presentedFingerprint
      lastTestedAt
      createdAt
      updatedAt
      endpoints {
        host
        port
        tlsFingerprint
        lastError
        lastOkAt
      }
    }
  }
`);

export const UpdateNode = graphql(`
  mutation UpdateNode($input: UpdateNodeInput!) {
    updateNode(input: $input) {
      id
      name
      host
      port
      tokenId
      isDefault
      hasSshPassword
      tlsFingerprint
      allowInsecureTls
      pveVersion
      lastTestedAt
      endpoints {
        host
        port
        tlsFingerprint
        lastError
        lastOkAt
      }
    }
  }
`);

export const DeleteNode = graphql(`
  mutation DeleteNode($id: ID!) {
    deleteNode(id: $id)
  }
`);

export const SetDefaultNode = graphql(`
  mutation SetDefaultNode($id: ID!) {
    setDefaultNode(id: $id) {
      id
      isDefault
    }
  }
`);

export const TestNodeConnection = graphql(`
  mutation TestNodeConnection($id: ID!) {
    testNodeConnection(id: $id) {
      ok
      latencyMs
      version
      release
      fingerprint
      clusterName
      pveNodeNames
      errorCode
      message
    }
  }
`);

export const Nodes = graphql(`
  query Nodes {
    nodes {
      id
      name
      isDefault
      createdAt
      containers {
        id
        vmid
        hostname
      }
    }
  }
`);

export const NodeEndpoints = graphql(`
  query NodeEndpoints($id: ID!) {
    node(id: $id) {
      id
      host
      port
      endpoints {
        host
        port
        tlsFingerprint
        lastError
        lastOkAt
      }
    }
  }
`);

export const NodeById = graphql(`
  query NodeById($id: ID!) {
    node(id: $id) {
      id
      name
      isDefault
      containers {
        id
        vmid
      }
    }
  }
`);

export const DefaultNode = graphql(`
  query DefaultNode {
    defaultNode {
      id
      name
    }
  }
`);

export const MeWithNodes = graphql(`
  query MeWithNodes {
    me {
      id
      nodes {
        id
        name
        containers {
          id
          vmid
          node {
            id
          }
        }
      }
    }
  }
`);

export const RegisterContainer = graphql(`
  mutation RegisterContainer($input: RegisterContainerInput!) {
    registerContainer(input: $input) {
      id
      vmid
      hostname
      createdAt
      node {
        id
        name
      }
    }
  }
`);

export const UnregisterContainer = graphql(`
  mutation UnregisterContainer($id: ID!) {
    unregisterContainer(id: $id)
  }
`);

export const TestNodeConnectionPrivileges = graphql(`
  mutation TestNodeConnectionPrivileges($id: ID!) {
    testNodeConnection(id: $id) {
      ok
      errorCode
      message
      version
      missingPrivileges
    }
  }
`);
