# Bare metal: renders, for every master, the systemd environment file of
# etcd-manager with the same static seed list, plus a copy of the unit.
# Copy <output_dir>/<host>/ to each machine (/etc/etcd-manager/,
# /etc/systemd/system/ and /etc/kubernetes/pki/etcd-manager-<cluster>/ for
# pki/), then `systemctl enable --now etcd-manager@<cluster>`.
#
#   terraform init && terraform apply -var-file=masters.tfvars
#
# Nothing here talks to a cloud: only files are written (hashicorp/local) and
# the CAs generated (hashicorp/tls; their keys are in the terraform state).

terraform {
  required_version = ">= 1.5"

  required_providers {
    local = {
      source  = "hashicorp/local"
      version = ">= 2.4, < 3.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0, < 5.0"
    }
  }
}

variable "etcd_cluster_name" {
  description = "Name of the etcd cluster (etcd-manager's --cluster-name), e.g. main or events."
  type        = string
  default     = "main"
}

variable "backup_store" {
  description = "Where backups and the desired state live: s3://bucket/prefix, gs://bucket/prefix or file:///path on shared storage."
  type        = string
}

variable "s3_region" {
  description = "Region of the S3 bucket (ignored for other stores)."
  type        = string
  default     = "us-east-1"
}

variable "s3_endpoint" {
  description = "Endpoint of an S3-compatible store (MinIO, Ceph), or an empty string for AWS."
  type        = string
  default     = ""
}

variable "masters" {
  description = "The masters: a name (for the output folder) and the address the others reach it on. 3 or 5 of them."
  type = list(object({
    name    = string
    address = string
  }))

  validation {
    condition     = contains([3, 5], length(var.masters)) && length(distinct([for m in var.masters : m.address])) == length(var.masters)
    error_message = "masters: list 3 or 5 machines with distinct addresses."
  }
}

variable "gossip_port" {
  description = "etcd-manager gossip (UDP) and peer API (TCP) port."
  type        = number
  default     = 8000
}

variable "etcd_client_port" {
  description = "etcd client port."
  type        = number
  default     = 4001
}

variable "etcd_peer_port" {
  description = "etcd peer port."
  type        = number
  default     = 2380
}

variable "etcd_quarantine_port" {
  description = "etcd client port while quarantined (used between managers only)."
  type        = number
  default     = 8001
}

variable "metrics_port" {
  description = "etcd-manager /metrics port."
  type        = number
  default     = 8081
}

variable "backup_interval" {
  description = "etcd-manager --backup-interval."
  type        = string
  default     = "15m"
}

variable "output_dir" {
  description = "Folder the files are written to, one sub-folder per master."
  type        = string
  default     = "rendered"
}

locals {
  seeds   = join(",", [for m in var.masters : "${m.address}:${var.gossip_port}"])
  by_name = { for m in var.masters : m.name => m }
}

resource "local_file" "env" {
  for_each        = local.by_name
  filename        = "${var.output_dir}/${each.key}/etcd-manager/${var.etcd_cluster_name}.env"
  file_permission = "0640"
  content = templatefile("${path.module}/templates/etcd-manager.env.tftpl", {
    cluster_name    = var.etcd_cluster_name
    backup_store    = var.backup_store
    s3_region       = var.s3_region
    s3_endpoint     = var.s3_endpoint
    address         = each.value.address
    seeds           = local.seeds
    cluster_size    = length(var.masters)
    gossip_port     = var.gossip_port
    client_port     = var.etcd_client_port
    peer_port       = var.etcd_peer_port
    quarantine_port = var.etcd_quarantine_port
    metrics_port    = var.metrics_port
    backup_interval = var.backup_interval
    pki_dir         = "/etc/kubernetes/pki/etcd-manager-${var.etcd_cluster_name}"
  })
}

# The same three CAs for every master, into <host>/pki/ (install as
# /etc/kubernetes/pki/etcd-manager-<cluster>/, readable by the manager only).
module "pki" {
  source = "../modules/pki"
}

locals {
  # One entry per (master, CA).
  host_cas = {
    for pair in setproduct(keys(local.by_name), ["etcd-manager-ca", "etcd-peers-ca", "etcd-clients-ca"]) :
    "${pair[0]}/${pair[1]}" => { host = pair[0], ca = pair[1] }
  }
}

resource "local_sensitive_file" "pki" {
  for_each        = local.host_cas
  filename        = "${var.output_dir}/${each.value.host}/pki/${each.value.ca}.key"
  file_permission = "0600"
  content         = module.pki.files["${each.value.ca}.key"]
}

resource "local_file" "pki_cert" {
  for_each        = local.host_cas
  filename        = "${var.output_dir}/${each.value.host}/pki/${each.value.ca}.crt"
  file_permission = "0644"
  content         = module.pki.files["${each.value.ca}.crt"]
}

resource "local_file" "unit" {
  for_each        = local.by_name
  filename        = "${var.output_dir}/${each.key}/systemd/etcd-manager@.service"
  file_permission = "0644"
  content         = file("${path.module}/../../systemd/etcd-manager@.service")
}

output "seeds" {
  description = "The static seed list in every rendered file."
  value       = local.seeds
}
