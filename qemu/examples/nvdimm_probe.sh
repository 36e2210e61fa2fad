# The NVDIMM's modes in the test guest (run by the nvdimm_shell example, with the vm_pmem test
# binary as the first BINARY, on a fresh NVDIMM_FILE). See docs/nvdimm.md for what it printed.
N=/sys/bus/nd/devices
sleep 2
echo "== raw (label-less namespace, as the kernel makes it)"
cat $N/namespace0.0/mode; ls -l /dev/pmem* /dev/dax* 2>&1
ls $N/; cat $N/region0/pfn_seed $N/region0/dax_seed $N/region0/btt_seed
cat $N/namespace0.0/size $N/namespace0.0/resource $N/region0/align
echo "queue/dax: $(cat /sys/block/pmem0/queue/dax)"
/bin/mke2fs -t ext4 -b 4096 -F -q /dev/pmem0; mkdir -p /mnt
mount -t ext4 -o dax /dev/pmem0 /mnt; echo "mount raw -o dax: $?"; dmesg | tail -2
umount /mnt 2>/dev/null
echo "== fsdax: the region's pfn seed claims the namespace"
echo namespace0.0 > $N/namespace0.0/driver/unbind; echo "unbind: $?"
seed=$(cat $N/region0/pfn_seed); d=$N/$seed; echo "seed $seed, alignments $(cat $d/supported_alignments)"
cat /proc/sys/kernel/random/uuid > $d/uuid; echo 2097152 > $d/align; echo pmem > $d/mode
echo namespace0.0 > $d/namespace; echo $seed > /sys/bus/nd/drivers/nd_pmem/bind; echo "bind: $?"
sleep 1; ls -l /dev/pmem*; echo "data at $(cat $d/resource), $(cat $d/size) bytes"
echo "queue/dax: $(cat /sys/block/pmem0/queue/dax)"
/bin/mke2fs -t ext4 -b 4096 -F -q /dev/pmem0
mount -t ext4 -o dax /dev/pmem0 /mnt; echo "mount fsdax -o dax: $?"; grep /mnt /proc/mounts
/bin/nvkv-guest-tests file /mnt/pmem.file
echo "== a file on tmpfs"
/bin/nvkv-guest-tests file /tmp/pmem.file
umount /mnt
