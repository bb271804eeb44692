# The three certificate authorities etcd-manager reads from its --pki-dir
# (upstream's names): etcd-manager-ca for mutual TLS between managers,
# etcd-peers-ca and etcd-clients-ca for etcd's peer and client TLS. Every
# master needs the same three; node certificates are issued from them by
# each manager at every start.
#
# The private keys are kept in the terraform state: protect the state as you
# protect the backups. To keep them out of it, run
# `etcd-manager-ctl init-pki -pki-dir <dir>` once, copy the folder to every
# master yourself, and set manage_pki = false in the calling module.

terraform {
  required_version = ">= 1.5"

  required_providers {
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0, < 5.0"
    }
  }
}

variable "validity_hours" {
  description = "How long the CAs are valid (default 10 years)."
  type        = number
  default     = 87600
}

locals {
  names = toset(["etcd-manager-ca", "etcd-peers-ca", "etcd-clients-ca"])
}

resource "tls_private_key" "ca" {
  for_each    = local.names
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  for_each              = local.names
  private_key_pem       = tls_private_key.ca[each.key].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = var.validity_hours
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature"]

  subject {
    common_name = each.key
  }
}

output "files" {
  description = "File name => PEM content, for <pki-dir>/: <name>.crt and <name>.key of each CA."
  sensitive   = true
  value = merge(
    { for n in local.names : "${n}.crt" => tls_self_signed_cert.ca[n].cert_pem },
    { for n in local.names : "${n}.key" => tls_private_key.ca[n].private_key_pem },
  )
}
