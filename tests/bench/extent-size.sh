#!/bin/sh
# Index size of format 2 (bmap) and of the extent table of format 3 (draft),
# docs/design.md "Metadata at scale", D1.  Usage:
#   extent-size.sh DB old|new seq|rand COUNT   (seq: COUNT 1 MiB extents; rand: COUNT 4 KiB writes)
# $1 = db, $2 = schema (old|new), $3 = workload (seq|rand|seqmerged), $4 = count
db=$1; schema=$2; wl=$3; n=$4
rm -f $db $db-wal $db-shm
{
echo "PRAGMA page_size=4096; PRAGMA journal_mode=WAL;"
if [ $schema = old ]; then
 echo "CREATE TABLE bmap(node INTEGER NOT NULL, lblock INTEGER NOT NULL, chunk INTEGER NOT NULL, slot INTEGER NOT NULL, cksum INTEGER NOT NULL, PRIMARY KEY(node,lblock)) WITHOUT ROWID;"
else
 echo "CREATE TABLE extent(node INTEGER NOT NULL, lblock INTEGER NOT NULL, nblocks INTEGER NOT NULL, chunk INTEGER NOT NULL, slot INTEGER NOT NULL, PRIMARY KEY(node,lblock)) WITHOUT ROWID;"
fi
case $wl in
seq)  # n extents of 256 blocks (1 MiB), 64 per 64 MiB chunk
  if [ $schema = new ]; then
   echo "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < $n-1) INSERT INTO extent SELECT 7, i*256, 256, 100+i/64, (i%64)*256 FROM c;"
  else
   echo "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < $n*256-1) INSERT INTO bmap SELECT 7, i, 100+i/16384, i%16384, random() FROM c;"
  fi;;
rand) # n random 4 KiB blocks over 1 TiB (2^28 blocks), flushed in sorted batches of 4096
  b=0
  while [ $b -lt $((n/4096)) ]; do
   echo "BEGIN;"
   if [ $schema = new ]; then
    echo "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < 4095) INSERT OR REPLACE INTO extent SELECT 7, abs(random()) % 268435456 AS lb, 1, 100+($b*4096+i)/16384, ($b*4096+i)%16384 FROM c ORDER BY lb;"
   else
    echo "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM c WHERE i < 4095) INSERT OR REPLACE INTO bmap SELECT 7, abs(random()) % 268435456 AS lb, 100+($b*4096+i)/16384, ($b*4096+i)%16384, random() FROM c ORDER BY lb;"
   fi
   echo "COMMIT;"
   b=$((b+1))
  done;;
esac
echo "PRAGMA wal_checkpoint(TRUNCATE);"
echo "SELECT 'rows', (SELECT count(*) FROM $( [ $schema = old ] && echo bmap || echo extent));"
echo "SELECT 'pages', page_count, 'freelist', freelist_count FROM pragma_page_count, pragma_freelist_count;"
} | sqlite3 $db
ls -l $db | awk '{print "bytes", $5}'
