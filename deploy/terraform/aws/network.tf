resource "aws_security_group" "master" {
  name        = "${local.name}-master"
  description = "etcd-manager masters of ${var.cluster_name}"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.name}-master" })
}

# Between the masters only: gossip (UDP), the peer API (TCP), etcd's peer,
# client and quarantine ports.
locals {
  master_ports = {
    gossip-udp      = { protocol = "udp", port = var.gossip_port }
    peer-api-tcp    = { protocol = "tcp", port = var.gossip_port }
    etcd-peer       = { protocol = "tcp", port = var.etcd_peer_port }
    etcd-client     = { protocol = "tcp", port = var.etcd_client_port }
    etcd-quarantine = { protocol = "tcp", port = var.etcd_quarantine_port }
  }
}

resource "aws_vpc_security_group_ingress_rule" "between_masters" {
  for_each                     = local.master_ports
  security_group_id            = aws_security_group.master.id
  referenced_security_group_id = aws_security_group.master.id
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "etcd-manager ${each.key} between masters"
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each          = toset(var.monitoring_cidrs)
  security_group_id = aws_security_group.master.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  description       = "etcd-manager metrics from monitoring"
  tags              = local.tags
}

# Out: S3 and the Debian mirror (install-etcd.sh) at least.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.master.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  description       = "outbound"
  tags              = local.tags
}
