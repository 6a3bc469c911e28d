// Package spm is the Storage Pool Manager's extend service: it reads the extend
// requests hosts write into the storage mailbox (internal/mailbox), checks each
// against its VG, extends the LV with LVM2 through a long-lived lvm shell, and
// replies.
//
// Each domain (a VG named by the domain UUID) has one worker and one lvm shell.
// Each inbox/outbox pair is served by one mailbox reader, whatever the number of
// domains naming it. In a vdsm storage pool the master domain's mailbox carries
// the requests of every domain of the pool (the pool is not in the message): the
// domains of a pool then all name the master domain's inbox and outbox, and the
// SPM routes each request to its domain by the domain UUID in it. Pairs are told
// apart by the volumes' identity, not their paths: /dev/VG/inbox,
// /dev/mapper/VG-inbox and a symlink are one mailbox, and one inbox with two
// different outboxes is refused.
//
// A request that fits beside the VG's reserve is served at once; one that fits
// only by eating into the reserve is refused; one that does not fit at all waits,
// with no reply, until the VG grows (an operator's vgextend).
package spm
