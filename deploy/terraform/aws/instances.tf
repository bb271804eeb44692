resource "aws_ebs_volume" "data" {
  for_each          = local.masters
  availability_zone = each.key
  size              = var.data_volume_size_gb
  type              = var.data_volume_type
  encrypted         = true
  tags              = merge(local.tags, { Name = "${each.value.name}-data" })

  # etcd's data and the manager's identity live here.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_instance" "master" {
  for_each = local.masters

  ami                    = var.ami_id
  instance_type          = var.instance_type
  availability_zone      = each.key
  subnet_id              = each.value.subnet_id
  private_ip             = each.value.private_ip
  vpc_security_group_ids = [aws_security_group.master.id]
  iam_instance_profile   = aws_iam_instance_profile.master.name
  key_name               = var.key_name

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = 20
  }

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    data_volume_id      = aws_ebs_volume.data[each.key].id
    etcd_cluster_name   = var.etcd_cluster_name
    etcd_versions       = join(" ", var.etcd_versions)
    release_url         = var.release_tarball_url
    install_etcd_sh_b64 = filebase64("${path.module}/../../install-etcd.sh")
    systemd_unit_b64    = filebase64("${path.module}/../../systemd/etcd-manager@.service")
    # One line per CA file: its PEM, base64 in the user data, decoded on the master.
    pki_install = join("\n", [
      for f, pem in(var.manage_pki ? module.pki[0].files : {}) :
      "echo '${base64encode(pem)}' | base64 -d > \"$pki_dir/${f}\""
    ])
    env_file = templatefile("${path.module}/templates/etcd-manager.env.tftpl", {
      cluster_name    = var.etcd_cluster_name
      backup_store    = local.backup_store
      region          = data.aws_region.current.name
      address         = each.value.private_ip
      seeds           = local.seeds
      cluster_size    = length(var.zones)
      gossip_port     = var.gossip_port
      client_port     = var.etcd_client_port
      peer_port       = var.etcd_peer_port
      quarantine_port = var.etcd_quarantine_port
      metrics_port    = var.metrics_port
      backup_interval = var.backup_interval
      pki_dir         = "/etc/kubernetes/pki/etcd-manager-${var.etcd_cluster_name}"
    })
  })

  tags = merge(local.tags, { Name = each.value.name })

  lifecycle {
    precondition {
      condition     = contains(keys(var.subnet_ids), each.key)
      error_message = "subnet_ids has no subnet for zone ${each.key}: give one subnet per zone."
    }
    # A changed template must not replace a master behind your back: roll
    # masters one at a time (terraform apply -replace=...) instead.
    ignore_changes = [user_data, ami]
  }
}

resource "aws_volume_attachment" "data" {
  for_each    = local.masters
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[each.key].id
  instance_id = aws_instance.master[each.key].id

  stop_instance_before_detaching = true
}
