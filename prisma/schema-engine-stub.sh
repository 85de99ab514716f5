#!/bin/sh
# Stand-in for Prisma's native schema engine, which cannot be downloaded offline.
# `prisma generate` only checks that the path exists; anything that really needs the engine
# (migrate, db push) must fail loudly rather than "succeed" doing nothing.
echo "pvegraph: Prisma's schema engine is not available offline; use 'npx pvegraph migrate'." >&2
exit 1
