# Multi-AZ masters for etcd-manager on AWS: one instance per zone, each with
# its own EBS data volume, a shared S3 bucket for backups and the desired
# state, least-privilege IAM and the security-group rules the managers and
# etcd need between the masters.
#
# The masters get fixed private addresses (host_number in each subnet), so
# every manager is started with the same static seed list.

data "aws_region" "current" {}

data "aws_subnet" "master" {
  for_each = toset(var.zones)
  id       = var.subnet_ids[each.key]
}

locals {
  name = "${var.cluster_name}-etcd"

  # s3://<bucket>/<cluster>/backups/etcd/<etcd cluster>: kops' layout, so
  # etcd-manager-ctl and upstream tooling find everything where they expect it.
  backup_prefix = "${var.cluster_name}/backups/etcd"
  backup_store  = "s3://${var.bucket_name}/${local.backup_prefix}/${var.etcd_cluster_name}"

  masters = {
    for zone in var.zones : zone => {
      name       = "${local.name}-${zone}"
      subnet_id  = var.subnet_ids[zone]
      private_ip = cidrhost(data.aws_subnet.master[zone].cidr_block, var.host_number)
    }
  }

  seeds = join(",", [for zone in var.zones : "${local.masters[zone].private_ip}:${var.gossip_port}"])

  tags = merge(var.tags, {
    "etcd-manager/cluster" = var.cluster_name
  })
}

# The CAs every master needs in its --pki-dir (see modules/pki).
module "pki" {
  count  = var.manage_pki ? 1 : 0
  source = "../modules/pki"
}
