variable "cluster_name" {
  description = "Name of the Kubernetes (or other) cluster these masters serve, e.g. cluster.example.com. Names resources and the backup prefix."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{0,62}$", var.cluster_name))
    error_message = "cluster_name: use lowercase letters, digits, '.' and '-' (at most 63 characters)."
  }
}

variable "etcd_cluster_name" {
  description = "Name of the etcd cluster (etcd-manager's --cluster-name), e.g. main or events."
  type        = string
  default     = "main"
}

variable "zones" {
  description = "Availability zones, one master in each: 3 or 5 of them."
  type        = list(string)

  validation {
    condition     = contains([3, 5], length(var.zones)) && length(distinct(var.zones)) == length(var.zones)
    error_message = "zones: name 3 or 5 distinct availability zones (etcd needs an odd number of members)."
  }
}

variable "vpc_id" {
  description = "VPC of the masters."
  type        = string
}

variable "subnet_ids" {
  description = "Subnet of the master in each zone: a map from zone name to subnet id, with an entry for every zone."
  type        = map(string)
}

variable "host_number" {
  description = "Host number of each master's fixed private address inside its subnet (cidrhost). Fixed addresses make the static seed list."
  type        = number
  default     = 10
}

variable "instance_type" {
  description = "EC2 instance type of the masters."
  type        = string
  default     = "m6i.large"
}

variable "ami_id" {
  description = "AMI of the masters: Debian 12 (bookworm) or newer, with systemd and apt (install-etcd.sh fetches etcd from Debian's packages)."
  type        = string
}

variable "key_name" {
  description = "EC2 key pair for SSH, or null for none."
  type        = string
  default     = null
}

variable "bucket_name" {
  description = "Name of the S3 bucket this module creates for backups and the desired state."
  type        = string
}

variable "etcd_versions" {
  description = "etcd versions to install on every master (from Debian's packages); the cluster's spec must name one of them."
  type        = list(string)
  default     = ["3.5.30"]

  validation {
    condition     = length(var.etcd_versions) > 0 && alltrue([for v in var.etcd_versions : contains(["3.3.25", "3.4.23", "3.5.16", "3.5.30"], v)])
    error_message = "etcd_versions: choose from 3.3.25, 3.4.23, 3.5.16 and 3.5.30 (the versions install-etcd.sh can get)."
  }
}

variable "release_tarball_url" {
  description = "HTTPS URL of a .tar.gz holding the etcd-manager and etcd-manager-ctl binaries, or an empty string if the AMI already has them in /usr/local/bin."
  type        = string
  default     = ""
}

variable "backup_interval" {
  description = "etcd-manager --backup-interval."
  type        = string
  default     = "15m"
}

variable "noncurrent_version_days" {
  description = "Days S3 keeps old versions of overwritten or deleted objects (your window to undo an accidental delete, e.g. of control/etcd-cluster-created)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "data_volume_size_gb" {
  description = "Size of each master's EBS data volume (etcd's data dir)."
  type        = number
  default     = 20
}

variable "data_volume_type" {
  description = "EBS type of the data volumes; etcd wants low fsync latency."
  type        = string
  default     = "gp3"
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

variable "monitoring_cidrs" {
  description = "CIDR blocks allowed to scrape the metrics port (Prometheus)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "manage_pki" {
  description = "Generate the three CAs (modules/pki) and install them on every master through user data. Set false to provision /etc/kubernetes/pki/etcd-manager-<cluster> yourself (etcd-manager-ctl init-pki), keeping the CA keys out of the terraform state and user data."
  type        = bool
  default     = true
}
