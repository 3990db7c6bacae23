//! Route table, upstream client, header operations, upgrades.
